"""Training data: GuardReasoner-VLTrain records and our own JSONL, validated and converted for TRL.

Note for the trainer modules: the processor for a Qwen2.5-VL checkpoint (``AutoProcessor`` fails here
without torchvision) comes from :func:`guardreasoner_vl.training.processing.load_processor`.

Two input formats, one in-memory row (:class:`TrainSample`):

* ``"vltrain"``: the authors' records, ``{"messages": [system, user, assistant], "images": [...]}``
  (a JSON list or JSONL; the ``image``, ``text`` and ``text_image`` splits). The user turn is parsed back
  into request text and AI response (the inverse of :func:`guardreasoner_vl.prompts.vl_user_text`, checked
  by re-rendering), the labels are read from the assistant turn with the project's one parser, and the
  assistant turn becomes the SFT target.
* ``"jsonl"``: one JSON object per line with the fields of :class:`TrainSample` (``reasoning`` may replace
  ``target``: the target is then built by :func:`format_target`). :func:`save_samples` writes this format.

Where this departs from the paper and the released code, and why:

* The prompt used for training is the exact inference prompt (:func:`guardreasoner_vl.prompts.render_vl_prompt`):
  the instruction sits in the system turn, with colons ("Task 1: determine"). The released RL code put a
  comma variant of it in the user turn, so Qwen's default system prompt was added; train and serve prompts
  then disagreed. :func:`to_sft_record` and :func:`to_rl_record` render to the inference prompt byte for byte
  under the standard Qwen2.5-VL chat template (tested).
* Every row stores its own request *and* response label. A row without an AI response has
  ``response_label=None``; response labels are never filled from request labels (a bug of the released
  rejection-sampling script). Merged rows (see :mod:`guardreasoner_vl.training.augment`) carry their
  OR-combined labels, so the reward scores them against those.
* One image per row: the released checkpoints read one image per request. Rows with several images are
  refused with an error (merge them first with :func:`guardreasoner_vl.inputs.merge_images`).
* Records store image *paths*, not decoded images; the trainers open them when they build a batch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.parsing import parse_output
from guardreasoner_vl.prompts import (
    IMAGE_MARKER,
    NO_RESPONSE,
    VL_INSTRUCTION,
    ModelFamily,
    RenderedPrompt,
    chat_messages,
    parse_user_text,
    render_text_prompt,
    render_vl_prompt,
    vl_user_text,
)
from guardreasoner_vl.types import Verdict

__all__ = [
    "LABELS",
    "Label",
    "LoadReport",
    "SampleFormat",
    "TrainSample",
    "format_target",
    "load_samples",
    "samples_from_records",
    "save_samples",
    "to_rl_record",
    "to_sft_record",
    "user_content",
]

logger = logging.getLogger(__name__)

Label = Literal["harmful", "unharmful"]
LABELS: tuple[str, ...] = ("harmful", "unharmful")
"""The two labels a request or a response can have."""

SampleFormat = Literal["auto", "jsonl", "vltrain"]
Modality = Literal["text", "image", "text_image"]

_MAX_ERRORS_SHOWN = 5


def _normalise_label(value: object, name: str) -> object:
    if isinstance(value, Verdict):
        return value.value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in LABELS:
            return lowered
        raise InvalidInputError(f"unknown {name} {value!r}: allowed labels are 'harmful' and 'unharmful'")
    return value


class TrainSample(BaseModel):
    """One training row: a request (text and/or image), an optional AI response, and their gold labels.

    Example:
        >>> s = TrainSample(id="a", text="how to bake bread", request_label="unharmful")
        >>> s.modality, s.response_label
        ('text', None)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    """Unique id of the row (mining and augmentation refer to rows by id)."""
    text: str | None = None
    """The user's request text (``None`` for an image-only request)."""
    image: str | None = None
    """Path of the request image (absolute after loading), or ``None``."""
    response: str | None = None
    """The AI response to judge; ``None`` when there is none (the prompt then says ``None``)."""
    request_label: Label
    """Gold label of the request."""
    response_label: Label | None = None
    """Gold label of the response; set if and only if :attr:`response` is set."""
    target: str | None = None
    """SFT target: the whole assistant turn, ``<think>...</think>`` then ``<result>...</result>``."""
    source: str | None = None
    """Dataset or split the row came from."""
    merged_from: tuple[str, ...] = ()
    """Ids of the rows joined by safety-aware concatenation (empty for an original row)."""

    @field_validator("request_label", mode="before")
    @classmethod
    def _request_label(cls, value: object) -> object:
        return _normalise_label(value, "request_label")

    @field_validator("response_label", mode="before")
    @classmethod
    def _response_label(cls, value: object) -> object:
        return None if value is None else _normalise_label(value, "response_label")

    @model_validator(mode="after")
    def _consistent(self) -> TrainSample:
        if not self.id.strip():
            raise ValueError("id is empty")
        for name in ("text", "response", "target", "image"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty; leave it out (None) instead")
        if self.text is None and self.image is None:
            raise ValueError("empty sample: give text, an image, or both")
        if self.response is not None and self.response_label is None:
            raise ValueError("the sample has a response but no response_label")
        if self.response is None and self.response_label is not None:
            raise ValueError("response_label is set but the sample has no response (response_label must be None)")
        return self

    @property
    def modality(self) -> Modality:
        """``"text"``, ``"image"`` or ``"text_image"`` (the three GuardReasoner-VLTrain splits)."""
        if self.image is None:
            return "text"
        return "image" if self.text is None else "text_image"

    @property
    def is_merged(self) -> bool:
        return bool(self.merged_from)

    def render_prompt(self) -> RenderedPrompt:
        """The exact inference prompt of this row (VL family)."""
        return render_vl_prompt(self.text, response=self.response, has_image=self.image is not None)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_samples` read.

    Attributes:
        samples: the valid rows, in file order.
        errors: ``(record number, message)`` for each refused record; the number is 1-based (the line of a
            JSONL file, the position in a JSON list).
        path: the file or folder read, if any.
    """

    samples: list[TrainSample]
    errors: list[tuple[int, str]] = field(default_factory=list)
    path: str | None = None

    @property
    def counts(self) -> dict[str, Any]:
        """Row counts: total, refused, by source, modality, request and response label, merged, with target."""
        return {
            "total": len(self.samples),
            "refused": len(self.errors),
            "by_source": dict(Counter(s.source or "unknown" for s in self.samples)),
            "by_modality": dict(Counter(s.modality for s in self.samples)),
            "by_request_label": dict(Counter(s.request_label for s in self.samples)),
            "by_response_label": dict(Counter(s.response_label or "none" for s in self.samples)),
            "merged": sum(1 for s in self.samples if s.merged_from),
            "with_target": sum(1 for s in self.samples if s.target is not None),
        }

    def summary(self) -> str:
        """One line for logs, e.g. ``"120 samples (text 80, image 40), 2 refused"``."""
        counts = self.counts
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts["by_modality"].items()))
        return f"{counts['total']} samples ({parts}), {counts['refused']} refused"


# --------------------------------------------------------------------------------------------- helpers


def format_target(reasoning: str, request_label: object, response_label: object = None) -> str:
    """Build an SFT target from reasoning and labels in the VL output layout.

    Example:
        >>> print(format_target("A recipe question.", "unharmful", None))
        <think>
        A recipe question.
        </think>
        <result>
        Request: unharmful
        Response: None
        </result>
    """
    if not isinstance(reasoning, str) or not reasoning.strip():
        raise InvalidInputError("reasoning is empty: give the model's reasoning text")
    request = _normalise_label(request_label, "request_label")
    response = NO_RESPONSE if response_label is None else _normalise_label(response_label, "response_label")
    if request not in LABELS or (response != NO_RESPONSE and response not in LABELS):
        raise InvalidInputError("labels must be 'harmful' or 'unharmful' (response_label may be None)")
    return f"<think>\n{reasoning.strip()}\n</think>\n<result>\nRequest: {request}\nResponse: {response}\n</result>"


def _resolve_image(value: object, base: Path | None, check: bool) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if len(value) == 0:
            return None
        if len(value) > 1:
            raise ValueError(
                f"{len(value)} images in one record; one image per sample is supported "
                "(merge them first with guardreasoner_vl.inputs.merge_images)"
            )
        value = value[0]
    if isinstance(value, Mapping) and "path" in value:  # a datasets Image feature row
        value = value["path"]
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ValueError(f"image must be a file path, got {type(value).__name__}")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if check and not path.is_file():
        raise ValueError(f"image file not found: {path}")
    return str(path.resolve()) if check or path.is_absolute() else str(path)


def _content_text(content: object) -> str:
    """A message content (string, or a list of text/image parts) as text with ``<image>`` for images."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if not isinstance(part, Mapping):
                raise ValueError("message content parts must be objects with a 'type'")
            if part.get("type") == "text":
                out.append(str(part.get("text") or ""))
            elif part.get("type") in ("image", "image_url"):
                out.append(IMAGE_MARKER)
            else:
                raise ValueError(f"unknown content part type {part.get('type')!r}")
        return "".join(out)
    raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")


_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _parse_user_turn(user: str, *, n_images: int) -> tuple[str | None, str | None]:
    """Read a VL user turn back with the one inverse (:func:`~guardreasoner_vl.prompts.parse_user_text`):
    ``(request text, response)``, checked against the record's images and by re-rendering."""
    try:
        turn = parse_user_text(user, ModelFamily.VL)
    except InvalidInputError as exc:
        raise ValueError(str(exc)) from None
    if turn.has_image and n_images == 0:
        raise ValueError("the user turn has an <image> slot but the record has no image")
    if not turn.has_image and n_images:
        raise ValueError("the record has an image but its user turn has no <image> slot after 'Human user:'")
    if turn.image_slots > 1:
        raise ValueError(f"the user turn has {turn.image_slots} <image> slots; one image per sample is supported")
    if turn.text is None and not turn.has_image:
        raise ValueError("the user turn has neither text nor an image")
    rebuilt = vl_user_text(turn.text, turn.response, has_image=turn.has_image)
    if rebuilt != user and rebuilt[:-1] != user:
        raise ValueError("user turn is not in the GuardReasoner-VL layout (it does not re-render identically)")
    if turn.has_image and IMAGE_MARKER in (turn.text or ""):
        # a literal "<image>" inside the user's text is text, not a second slot; keep it but say so
        logger.debug("user text contains a literal %r after the image slot; kept as text", IMAGE_MARKER)
    return turn.text, turn.response


_VLTRAIN_LAYOUT = (
    'expected a GuardReasoner-VLTrain record {"messages": [a system turn (the GuardReasoner-VL instruction, '
    'optional), a user turn ("Human user:\\n..."), an assistant turn (reasoning + result)], "images": [paths]}'
)


def _check_system_turn(system: str | None) -> None:
    """The system turn, when the record has one, must be the VL instruction: training renders the prompt from
    :data:`VL_INSTRUCTION`, so a record written for another instruction would silently train on a prompt it
    was not made for. Trailing whitespace is ignored (JSON exports differ there)."""
    if system is None or system.rstrip() == VL_INSTRUCTION.rstrip():
        return
    at = next(
        (i for i, (a, b) in enumerate(zip(system, VL_INSTRUCTION, strict=False)) if a != b),
        min(len(system), len(VL_INSTRUCTION)),
    )
    start = max(0, at - 10)
    raise ValueError(
        "the system turn is not the GuardReasoner-VL instruction (training uses that instruction as the system "
        f"turn, byte for byte); they first differ at character {at}: expected ...{VL_INSTRUCTION[start : at + 40]!r}, "
        f"found ...{system[start : at + 40]!r}"
    )


def _from_vltrain(
    record: Mapping[str, Any], *, number: int, base: Path | None, source: str | None, check: bool
) -> TrainSample:
    messages = record.get("messages", record.get("conversations"))
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{_VLTRAIN_LAYOUT}; found keys {sorted(map(str, record))} and no non-empty 'messages' list")
    turns: dict[str, str] = {}
    roles: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ValueError(f"{_VLTRAIN_LAYOUT}; found a message that is a {type(message).__name__}")
        role = _ROLE_ALIASES.get(str(message.get("role", message.get("from", ""))).lower())
        if role is None:
            raise ValueError(f"{_VLTRAIN_LAYOUT}; found message role {message.get('role', message.get('from'))!r}")
        if role in turns:
            raise ValueError(f"{_VLTRAIN_LAYOUT}; found two {role} turns")
        roles.append(role)
        turns[role] = _content_text(message.get("content", message.get("value")))
    if roles not in (["system", "user", "assistant"], ["user", "assistant"]):
        raise ValueError(f"{_VLTRAIN_LAYOUT}; found turns {roles}")
    _check_system_turn(turns.get("system"))
    images = record.get("images", record.get("image"))
    image_list = [] if images is None else (list(images) if isinstance(images, list | tuple) else [images])
    text, response = _parse_user_turn(turns["user"], n_images=len(image_list))
    image = _resolve_image(image_list, base, check)
    target = turns["assistant"]
    parsed = parse_output(target)
    if parsed.request is None:
        raise ValueError("the assistant turn has no Request verdict")
    if response is None:
        if parsed.response is Verdict.HARMFUL:
            raise ValueError("the record has no AI response but its assistant turn says 'Response: harmful'")
        response_label = None
    else:
        if parsed.response is None or parsed.response_said_none:
            raise ValueError("the record has an AI response but its assistant turn gives no response label")
        response_label = parsed.response.value
    return TrainSample(
        id=str(record.get("id") or f"{source or 'vltrain'}-{number}"),
        text=text if text else None,
        image=image,
        response=response,
        request_label=parsed.request.value,  # type: ignore[arg-type]
        response_label=response_label,  # type: ignore[arg-type]
        target=target,
        source=str(record.get("source") or source or "vltrain"),
    )


_JSONL_KEYS = frozenset(TrainSample.model_fields) | {"reasoning"}


def _from_jsonl(
    record: Mapping[str, Any], *, number: int, base: Path | None, source: str | None, check: bool
) -> TrainSample:
    unknown = sorted(set(record) - _JSONL_KEYS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_JSONL_KEYS))}")
    data = dict(record)
    data["image"] = _resolve_image(data.get("image"), base, check)
    if "request_label" not in data:
        raise ValueError("missing request_label (harmful or unharmful)")
    reasoning = data.pop("reasoning", None)
    if reasoning is not None:
        if data.get("target") is not None:
            raise ValueError("give either reasoning or target, not both")
        data["target"] = format_target(reasoning, data["request_label"], data.get("response_label"))
    data.setdefault("id", f"{source or 'jsonl'}-{number}")
    data["id"] = str(data["id"])
    data.setdefault("source", source)
    if isinstance(data.get("merged_from"), list):
        data["merged_from"] = tuple(data["merged_from"])
    sample = TrainSample.model_validate(data)
    if sample.target is not None:
        _check_target(sample)
    return sample


def _check_target(sample: TrainSample) -> None:
    parsed = parse_output(sample.target or "")
    if parsed.request is None:
        raise ValueError("target has no Request verdict (expected <think>...</think><result>Request: ...</result>)")
    if parsed.request.value != sample.request_label:
        raise ValueError(f"target says Request: {parsed.request.value} but request_label is {sample.request_label}")
    if sample.response_label is not None:
        said = None if parsed.response is None or parsed.response_said_none else parsed.response.value
        if said != sample.response_label:
            raise ValueError(f"target says Response: {said or 'None'} but response_label is {sample.response_label}")
    elif parsed.response is Verdict.HARMFUL:
        raise ValueError("target says Response: harmful but the sample has no response")


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        msgs = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            msgs.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(msgs)
    return str(exc)


def _detect_format(record: Mapping[str, Any]) -> Literal["jsonl", "vltrain"]:
    return "vltrain" if "messages" in record or "conversations" in record else "jsonl"


def samples_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    format: SampleFormat = "auto",
    image_root: str | os.PathLike[str] | None = None,
    source: str | None = None,
    strict: bool = True,
    check_images: bool = True,
    path: str | None = None,
) -> LoadReport:
    """Validate in-memory records (e.g. rows of a ``datasets`` split) into a :class:`LoadReport`.

    Args:
        records: dicts in the ``"jsonl"`` or ``"vltrain"`` layout.
        format: ``"auto"`` (per record: ``messages`` means vltrain), ``"jsonl"`` or ``"vltrain"``.
        image_root: folder that relative image paths are resolved against.
        source: value of :attr:`TrainSample.source` for rows that do not name one.
        strict: raise on the first problems (listing up to five, with counts); else skip bad records.
        check_images: check that each image file exists.
        path: name of the file the records came from (for messages).

    Raises:
        InvalidInputError: with ``strict`` and at least one bad record, or a duplicate id.
    """
    if format not in ("auto", "jsonl", "vltrain"):
        raise InvalidInputError(f"unknown format {format!r}: use 'auto', 'jsonl' or 'vltrain'")
    base = Path(image_root).expanduser() if image_root is not None else None
    samples: list[TrainSample] = []
    errors: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(records, start=1):
        try:
            if not isinstance(record, Mapping):
                raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
            kind = _detect_format(record) if format == "auto" else format
            if kind == "vltrain":
                sample = _from_vltrain(record, number=number, base=base, source=source, check=check_images)
            else:
                sample = _from_jsonl(record, number=number, base=base, source=source, check=check_images)
            if sample.id in seen:
                raise ValueError(f"duplicate id {sample.id!r} (first seen in record {seen[sample.id]})")
        except (ValueError, TypeError) as exc:
            errors.append((number, _error_text(exc)))
            continue
        seen[sample.id] = number
        samples.append(sample)
    report = LoadReport(samples=samples, errors=errors, path=path)
    where = f" in {path}" if path else ""
    if errors and strict:
        shown = "\n".join(f"  record {n}: {msg}" for n, msg in errors[:_MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise InvalidInputError(
            f"{len(errors)} of {len(errors) + len(samples)} records{where} are invalid:\n{shown}{more}\n"
            "Fix them, or load with strict=False to skip them."
        )
    if errors:
        logger.warning("skipped %d invalid records%s (first: record %d: %s)", len(errors), where, *errors[0])
    return report


def _read_records(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
        return list(data)
    records: list[Any] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            records.append(None)  # keep numbering aligned with line numbers; dropped below
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            records.append(_BadLine(f"line {line_no} is not valid JSON: {exc.msg}"))
    return records


@dataclass(frozen=True)
class _BadLine:
    message: str


def load_samples(
    path: str | os.PathLike[str],
    *,
    format: SampleFormat = "auto",
    image_root: str | os.PathLike[str] | None = None,
    strict: bool = True,
    source: str | None = None,
    check_images: bool = True,
) -> LoadReport:
    """Load and validate training rows from a file (JSONL or a JSON list) or a folder of them.

    Args:
        path: a ``.jsonl``/``.json`` file, or a folder whose ``*.json``/``*.jsonl`` files are all read
            (e.g. the ``image``, ``text`` and ``text_image`` splits of GuardReasoner-VLTrain).
        format: ``"auto"`` (``messages`` records are vltrain, others our JSONL), ``"jsonl"`` or ``"vltrain"``.
        image_root: folder that relative image paths are resolved against (default: the file's folder).
        strict: raise :class:`InvalidInputError` listing the first bad records and the counts; with
            ``strict=False`` bad records are skipped and listed in :attr:`LoadReport.errors`.
        source: :attr:`TrainSample.source` for rows that do not name one (default: the file's stem).
        check_images: check that every image file exists.

    Returns:
        A :class:`LoadReport` with the rows, the refused records and counts.

    Example:
        >>> import json, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "rows.jsonl"
        >>> _ = p.write_text(json.dumps({"text": "hi", "request_label": "unharmful"}) + "\\n")
        >>> load_samples(p).counts["by_request_label"]
        {'unharmful': 1}
    """
    if format not in ("auto", "jsonl", "vltrain"):
        raise InvalidInputError(f"unknown format {format!r}: use 'auto', 'jsonl' or 'vltrain'")
    root = Path(path).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        if not files:
            raise InvalidInputError(f"no .json or .jsonl files in {root}")
    elif root.is_file():
        files = [root]
    else:
        raise InvalidInputError(f"training data not found: {root}")
    samples: list[TrainSample] = []
    errors: list[tuple[int, str]] = []
    seen: set[str] = set()
    for file in files:
        raw = _read_records(file)
        numbered = [(n, r) for n, r in enumerate(raw, start=1) if r is not None]
        bad = [(n, r.message) for n, r in numbered if isinstance(r, _BadLine)]
        good = [(n, r) for n, r in numbered if not isinstance(r, _BadLine)]
        report = samples_from_records(
            (r for _, r in good),
            format=format,
            image_root=image_root if image_root is not None else file.parent,
            source=source or file.stem,
            strict=False,
            check_images=check_images,
            path=str(file),
        )
        # map positions among the good records back to line numbers
        file_errors = bad + [(good[i - 1][0], msg) for i, msg in report.errors]
        for sample in report.samples:
            if sample.id in seen:
                file_errors.append((0, f"duplicate id {sample.id!r} across files ({file.name})"))
                continue
            seen.add(sample.id)
            samples.append(sample)
        prefix = f"{file.name}:" if len(files) > 1 else ""
        errors.extend((n, f"{prefix}{msg}" if prefix else msg) for n, msg in sorted(file_errors))
    report = LoadReport(samples=samples, errors=errors, path=str(root))
    if errors and strict:
        shown = "\n".join(f"  record {n}: {msg}" for n, msg in errors[:_MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise InvalidInputError(
            f"{len(errors)} of {len(errors) + len(samples)} records in {root} are invalid "
            f"({len(samples)} valid):\n{shown}{more}\nFix them, or load with strict=False to skip them."
        )
    if errors:
        logger.warning("%s: skipped %d invalid records", root, len(errors))
    logger.info("%s: %s", root, report.summary())
    return report


def save_samples(samples: Iterable[TrainSample], path: str | os.PathLike[str]) -> Path:
    """Write rows as JSONL (the ``"jsonl"`` format), atomically (a temporary file renamed into place).

    Returns:
        The path written.
    """
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample.model_dump(mode="json"), ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------------------------- TRL conversions


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def user_content(sample: TrainSample) -> list[dict[str, Any]]:
    """The user turn as TRL content parts, the image part exactly where ``<image>`` sits.

    ``[text "Human user:\\n", {"type": "image"}, text "\\n{prompt}\\n\\nAI assistant:\\n{response}\\n"]`` with an
    image, ``[text user_text]`` without (from :func:`~guardreasoner_vl.prompts.chat_messages`, the builder
    behind :meth:`RenderedPrompt.chat_messages`).
    """
    return _prompt_messages(sample)[1]["content"]  # type: ignore[no-any-return]


def _prompt_messages(sample: TrainSample) -> list[dict[str, Any]]:
    rendered = sample.render_prompt()
    return chat_messages(
        rendered.user_text, has_image=rendered.has_image, image_part={"type": "image"}, system_as_parts=True
    )


def to_sft_record(
    sample: TrainSample, *, family: ModelFamily = ModelFamily.VL, prompt_completion: bool = False
) -> dict[str, Any]:
    """Convert a row to TRL's SFT format with the exact inference prompt.

    VL family: TRL's conversational vision format ``{"messages": [system, user, assistant], "images": [...]}``
    with list contents in every message (mixing strings and lists breaks Arrow); with ``prompt_completion=True``
    the same turns as ``{"prompt": [system, user], "completion": [assistant], "images": [...]}``, TRL's
    prompt-completion form, whose loss covers the completion only (``completion_only_loss``). Text family
    (GuardReasoner 1B/3B/8B, no chat template): ``{"prompt": raw prompt string, "completion": target}``.

    Raises:
        InvalidInputError: the row has no target, or an image for the text family.

    Example:
        >>> rec = to_sft_record(TrainSample(id="a", text="hi", request_label="unharmful",
        ...                                 target="<think>ok</think><result>Request: unharmful</result>"))
        >>> [m["role"] for m in rec["messages"]], rec["images"]
        (['system', 'user', 'assistant'], [])
    """
    if sample.target is None:
        raise InvalidInputError(f"sample {sample.id!r} has no target (reasoning + result): SFT needs one")
    family = ModelFamily(family)
    if not family.spec.chat:
        if sample.image is not None:
            raise InvalidInputError(f"sample {sample.id!r} has an image; the text family cannot read images")
        return {"prompt": render_text_prompt(sample.text, response=sample.response).text, "completion": sample.target}
    assistant = {"role": "assistant", "content": [_text_part(sample.target)]}
    images = [sample.image] if sample.image else []
    if prompt_completion:
        return {"prompt": _prompt_messages(sample), "completion": [assistant], "images": images}
    return {"messages": [*_prompt_messages(sample), assistant], "images": images}


def to_rl_record(sample: TrainSample) -> dict[str, Any]:
    """Convert a row to a GRPO prompt row: the exact inference prompt plus the labels the reward reads.

    Returns:
        ``{"prompt": [system, user], "images": [path] or [], "request_label": str, "response_label": str | None,
        "id": str, "merged": bool}``. The labels of a merged row are its OR-combined labels.

    Example:
        >>> rec = to_rl_record(TrainSample(id="a", text="hi", request_label="harmful"))
        >>> rec["request_label"], rec["response_label"], rec["prompt"][0]["role"]
        ('harmful', None, 'system')
    """
    return {
        "prompt": _prompt_messages(sample),
        "images": [sample.image] if sample.image else [],
        "request_label": sample.request_label,
        "response_label": sample.response_label,
        "id": sample.id,
        "merged": sample.is_merged,
    }
