"""Read benchmark files and prediction files in the authors' formats, and a plain JSONL of our own.

Formats read:

* **Text benchmarks** (GuardReasoner): a JSON list of ``{"instruction", "input", "output"}``. ``input`` is
  ``"Human user:\\n{prompt}\\n\\nAI assistant:\\n{response}\\n\\n"`` (``None`` when there is no response)
  and is split back into prompt and response; ``output`` is the gold label (``harmful``, ``unharmful``,
  ``refusal``, ``compliance``) or an ``Answers:`` block (SafeRLHF, BeaverTails).
* **VL benchmarks** (GuardReasoner-VL): a JSON list of records whose user turn is
  ``"Human user:\\n<image>\\n{prompt}\\n\\nAI assistant:\\n{response}\\n"`` (the VL layout, reference
  section 2), either as chat ``messages``/``conversations`` (user turn, then the gold as the assistant
  turn) or as ``input``/``output`` fields, with image paths in ``images`` (or ``image``) relative to the
  JSON file.
* **GuardReasoner-VLTest** as the authors publish it (:func:`load_vltest`): one JSON per benchmark. The text
  ones (``ToxicChat.json``, ``WildGuardTestPrompt.json``, ...) are text benchmarks as above; the image ones
  (``HarmImageTest.json``, ``SPA_VL_Eval.json``) are chat records ``{"messages": [user, assistant]}`` whose user
  turn is the VL instruction followed by ``"\n\nHuman user:\n<image>\n..."`` (the authors' scripts cut the
  turn at that ``Human user:``; we check the part before it is the instruction) and whose assistant turn holds
  the gold ``Request:`` / ``Response:`` lines. Records name no image: the i-th record's image is the i-th file
  of the image folder named after the benchmark (``HarmImageTest/``), in sorted file-name order, as the
  authors' scripts index the dataset's image folder.
* **Predictions**: JSONL with ``prompt``, ``label`` and ``predict`` per line (what the authors' text generation
  script writes, and what :mod:`guardreasoner_vl.evaluation.runner` writes, plus our own fields). The VL
  generation script's layout is read too: ``text_input``, ``text_output`` (the model's output), ``label``,
  ``predict`` (its own extracted label, kept in ``extra``), and for SPA-VL-Eval ``label_res`` / ``predict_res``.
* **Our JSONL**: one object a line with ``text``, optional ``response``, optional ``image``/``images``
  (paths relative to the file), and the gold as ``label`` (one label or an ``Answers:`` block) or as
  ``request_label`` / ``response_label`` / ``refusal_label``.

Gold labels are data, not model output: :func:`gold_label` reads the dataset's own label field. Model
outputs are only ever read by :func:`guardreasoner_vl.parsing.parse_output` (strict scoring) or by the
documented emulation in :mod:`guardreasoner_vl.evaluation.reference`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.registry import (
    BENCHMARKS,
    TASKS,
    BenchmarkSpec,
    Modality,
    Task,
    find_benchmarks,
    normalize_name,
)
from guardreasoner_vl.prompts import IMAGE_MARKER, USER_HEAD, VL_INSTRUCTION, ModelFamily, parse_user_text

__all__ = [
    "PREDICTIONS_FILE",
    "VLTEST_FILES",
    "BenchmarkData",
    "EvalSample",
    "PredictionRecord",
    "PredictionsFile",
    "discover_benchmarks",
    "discover_predictions",
    "gold_for",
    "gold_label",
    "iter_jsonl",
    "load_benchmark",
    "load_jsonl_samples",
    "load_predictions",
    "load_samples",
    "load_text_benchmark",
    "load_vl_benchmark",
    "load_vltest",
    "parse_user_turn",
]

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
"""File name of a benchmark's predictions inside its folder (the authors' layout)."""

_TASK_KEY = {"request": "request", "response": "response", "refusal": "completion"}
_GOLD_LINE = re.compile(r"(?<![a-z])(request|completion|response)\s*:\s*([a-z]+)", re.IGNORECASE)
_CLASSES: dict[str, tuple[str, ...]] = {
    "request": ("harmful", "unharmful"),
    "response": ("harmful", "unharmful"),
    "refusal": ("refusal", "compliance"),
}
_MISSING = {"", "none", "null", "n/a", "nan"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# -- gold labels ---------------------------------------------------------------------------------------------


def gold_label(label: object, task: Task) -> str | None:
    """The gold class of ``task`` in a dataset label field, or None when the label gives none.

    ``label`` is one label (``harmful``, ``unharmful``, ``refusal``, ``compliance``; ``harmless`` means
    unharmful) or a block with ``Request:`` / ``Completion:`` / ``Response:`` lines, where ``None`` means
    "no label for this task" (the last line for the task wins).

    Raises:
        InvalidInputError: the label is not a string, or names a class the task does not have.

    Example:
        >>> gold_label("Answers: \\nRequest: None\\nCompletion: None\\nResponse: harmful\\n", "response")
        'harmful'
        >>> gold_label("Answers: \\nRequest: None\\nCompletion: None\\nResponse: harmful\\n", "request") is None
        True
        >>> gold_label("Refusal", "refusal")
        'refusal'
    """
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInputError(f"a gold label must be a string, got {type(label).__name__}: {label!r}")
    value: str | None
    lines = _GOLD_LINE.findall(label)
    if lines:
        key = _TASK_KEY[task]
        found = [v for k, v in lines if k.lower() == key]
        if not found:
            return None
        value = found[-1].lower()
    else:
        value = label.strip().lower()
    if value in _MISSING:
        return None
    if value == "harmless":
        value = "unharmful"
    if value not in _CLASSES[task]:
        raise InvalidInputError(
            f"gold label {value!r} does not fit the {task} task; allowed: {', '.join(_CLASSES[task])} "
            "(or None when the sample has no label for it)"
        )
    return value


def gold_for(label: object, spec: BenchmarkSpec) -> str | None:
    """The gold class of ``spec``'s task in a label field.

    For a benchmark scored on several tasks (WildGuardTest, SPA-VL-Eval) one bare label cannot say which
    task it belongs to, so only a block with ``Request:`` / ``Response:`` lines gives gold there; a bare
    label gives None (no gold for this task).
    """
    if isinstance(label, str) and not _GOLD_LINE.search(label) and _multi_task(spec):
        return None
    return gold_label(label, spec.task)


def _multi_task(spec: BenchmarkSpec) -> bool:
    return sum(1 for s in BENCHMARKS if s.name == spec.name) > 1


def _labels_block(request: str | None, refusal: str | None, response: str | None) -> str:
    return f"Answers: \nRequest: {request or 'None'}\nCompletion: {refusal or 'None'}\nResponse: {response or 'None'}\n"


# -- samples -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalSample:
    """One benchmark sample: what the guard is shown and the gold label.

    Attributes:
        id: a stable id inside its benchmark (the record's ``id`` or its index); resuming keys on it.
        text: the user's request text, or None (image-only request).
        response: the AI's response, or None when the sample has none.
        images: image files of the request (usually one), already resolved to paths.
        label: the gold label exactly as the file gives it (written back to the predictions file).
    """

    id: str
    text: str | None
    response: str | None
    label: str | None
    images: tuple[Path, ...] = ()

    def gold(self, task: Task) -> str | None:
        """The gold class for ``task`` (see :func:`gold_label`)."""
        return gold_label(self.label, task)

    def item(self) -> dict[str, Any]:
        """The sample as an input of :meth:`guardreasoner_vl.Guard.moderate_batch`."""
        image: Any = None
        if len(self.images) == 1:
            image = str(self.images[0])
        elif self.images:
            image = [str(p) for p in self.images]
        return {"text": self.text, "image": image, "response": self.response}


def parse_user_turn(user: str, *, layout: Literal["text", "vl"] = "text") -> tuple[str | None, str | None, int]:
    """Split an authors' user turn back into ``(prompt, response, number of <image> markers)``.

    ``layout="text"``: ``"Human user:\\n{prompt}\\n\\nAI assistant:\\n{response}\\n\\n"`` (text benchmarks);
    ``layout="vl"``: ``"Human user:\\n<image>\\n{prompt}\\n\\nAI assistant:\\n{response}\\n"`` (the prompt part
    may be absent for an image-only request, and the image marker for a text-only one). A response of
    ``None`` means there is no response. This is :func:`guardreasoner_vl.prompts.parse_user_text`, the one
    inverse of the renderer: the split is at the last ``"\\n\\nAI assistant:\\n"`` (see its rules for
    ambiguous turns); in the text layout a leading ``<image>`` is still counted, so that a text benchmark
    record with one is refused.

    Raises:
        InvalidInputError: the string does not have that layout.

    Example:
        >>> parse_user_turn("Human user:\\nHi\\n\\nAI assistant:\\nNone\\n\\n")
        ('Hi', None, 0)
        >>> parse_user_turn("Human user:\\n<image>\\n\\nAI assistant:\\nOk.\\n", layout="vl")
        (None, 'Ok.', 1)
    """
    turn = parse_user_text(user, ModelFamily(layout), multi_image=True)
    images = turn.image_slots
    rest = turn.text or ""
    while layout == "text" and rest.startswith(IMAGE_MARKER):
        images, rest = images + 1, rest[len(IMAGE_MARKER) :]
    return turn.text, turn.response, images


def _read_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise InvalidInputError(f"{path} must hold a JSON list of records, got {type(data).__name__}")
    return data


def _record_id(record: dict[str, Any], index: int) -> str:
    value = record.get("id")
    return str(value) if value is not None else str(index)


def _check_unique(samples: list[EvalSample], path: Path) -> list[EvalSample]:
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise InvalidInputError(f"{path}: sample id {sample.id!r} appears twice; ids must be unique")
        seen.add(sample.id)
    return samples


def load_text_benchmark(path: str | Path) -> list[EvalSample]:
    """Load a GuardReasoner text benchmark (JSON list of ``instruction``/``input``/``output``).

    Raises:
        InvalidInputError: the file is not in that format (the message names the record).
    """
    path = Path(path)
    samples = []
    for index, record in enumerate(_read_json_list(path)):
        if not isinstance(record, dict) or "input" not in record or "output" not in record:
            raise InvalidInputError(f"{path} record {index}: expected an object with 'input' and 'output'")
        try:
            prompt, response, images = parse_user_turn(record["input"], layout="text")
        except InvalidInputError as exc:
            raise InvalidInputError(f"{path} record {index}: {exc}") from None
        if images:
            raise InvalidInputError(f"{path} record {index}: a text benchmark record has an {IMAGE_MARKER} marker")
        label = record["output"]
        if label is not None and not isinstance(label, str):
            raise InvalidInputError(f"{path} record {index}: 'output' must be a string label")
        samples.append(EvalSample(_record_id(record, index), prompt, response, label))
    return _check_unique(samples, path)


def _turn_text(turn: Any, where: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise InvalidInputError(f"{where}: a chat turn must be an object")
    role = str(turn.get("role", turn.get("from", ""))).lower()
    content = turn.get("content", turn.get("value"))
    if not isinstance(content, str):
        raise InvalidInputError(f"{where}: a chat turn's content must be a string (the authors' layout)")
    return role, content


def _resolve_images(record: dict[str, Any], root: Path, where: str) -> tuple[Path, ...]:
    raw = record.get("images", record.get("image"))
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise InvalidInputError(f"{where}: 'images' must be a path or a list of paths")
    paths = []
    for item in items:
        path = Path(item)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise InvalidInputError(f"{where}: image file not found: {path}")
        paths.append(path)
    return tuple(paths)


def _strip_instruction(user: str) -> str:
    """The ``Human user:`` part of a user turn that starts with the VL instruction (the VLTest layout)."""
    if user.startswith(USER_HEAD):
        return user
    cut = user.find("\n\n" + USER_HEAD)
    if cut < 0:
        raise InvalidInputError(
            f"the user turn must start with {USER_HEAD!r}, or with the VL instruction and then "
            f"'\\n\\n{USER_HEAD!r}' (GuardReasoner-VLTest); found {user[:60]!r}"
        )
    prefix = user[:cut]
    if " ".join(prefix.split()) != " ".join(VL_INSTRUCTION.split()):
        raise InvalidInputError(
            f"the text before 'Human user:' is not the GuardReasoner-VL instruction; expected "
            f"{VL_INSTRUCTION[:50]!r}..., found {prefix[:80]!r}"
        )
    return user[cut + 2 :]


def _image_folder(folder: Path, count: int, where: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(files) != count:
        raise InvalidInputError(
            f"{where}: the records are aligned by index with the images of {folder}, but it holds "
            f"{len(files)} image(s) for {count} record(s)"
        )
    return files


def load_vl_benchmark(
    path: str | Path, *, image_root: str | Path | None = None, image_dir: str | Path | None = None
) -> list[EvalSample]:
    """Load a VL benchmark: a JSON list of records in the VL user-turn layout, plus image files.

    A record is either chat style, ``{"messages": [{"role": "user", "content": "Human user:\\n<image>\\n..."},
    {"role": "assistant", "content": <gold>}], "images": ["imgs/1.png"]}`` (``conversations`` with
    ``from``/``value`` works too; a system turn is ignored), or flat, ``{"input": <user turn>, "output":
    <gold>, "images": [...]}``. A ``label`` field, when present, is the gold and wins over the assistant turn.
    The gold is one label or a block with ``Request:`` / ``Response:`` lines (a ``<result>`` block does).

    GuardReasoner-VLTest's layout works too: the user turn may start with the VL instruction (it must be
    that instruction), and records that name no image take theirs by index from an image folder.

    Args:
        path: the JSON file.
        image_root: where relative image paths start (default: the JSON file's folder).
        image_dir: the image folder records without ``images`` are aligned with, i-th record to i-th file in
            sorted name order (default: the folder named like the JSON file, ``HarmImageTest/`` beside
            ``HarmImageTest.json``, when it exists).

    Raises:
        InvalidInputError: a record is malformed, an image is missing, the images of the folder do not match
            the records one to one, or the ``<image>`` markers do not match the images.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    records = _read_json_list(path)
    folder = Path(image_dir) if image_dir is not None else path.with_suffix("")
    by_index: list[Path] | None = None
    if any(isinstance(r, dict) and "images" not in r and "image" not in r for r in records) and folder.is_dir():
        by_index = _image_folder(folder, len(records), str(path))
    elif image_dir is not None:
        raise InvalidInputError(f"{path}: image_dir {folder} is not a folder")
    samples = []
    for index, record in enumerate(records):
        where = f"{path} record {index}"
        if not isinstance(record, dict):
            raise InvalidInputError(f"{where}: expected an object")
        turns = record.get("messages", record.get("conversations"))
        user: str | None = None
        gold: Any = record.get("label")
        if turns is not None:
            if not isinstance(turns, list):
                raise InvalidInputError(f"{where}: 'messages' must be a list of turns")
            for turn in turns:
                role, content = _turn_text(turn, where)
                if role in ("user", "human") and user is None:
                    user = content
                elif role in ("assistant", "gpt") and "label" not in record:
                    gold = content
        elif "input" in record:
            user = record["input"]
            if "label" not in record:
                gold = record.get("output")
        if not isinstance(user, str):
            raise InvalidInputError(f"{where}: no user turn found (expected 'messages' or 'input')")
        try:
            prompt, response, markers = parse_user_turn(_strip_instruction(user), layout="vl")
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}") from None
        images = _resolve_images(record, root, where)
        if not images and by_index is not None and markers:
            images = (by_index[index],)
        if markers != len(images) and not (markers == 1 and len(images) > 1):
            raise InvalidInputError(
                f"{where}: the user turn has {markers} {IMAGE_MARKER} marker(s) but the record has "
                f"{len(images)} image(s)"
            )
        if gold is not None and not isinstance(gold, str):
            raise InvalidInputError(f"{where}: the gold label must be a string")
        samples.append(EvalSample(_record_id(record, index), prompt, response, gold, images))
    return _check_unique(samples, path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each line of a JSONL file; blank lines are skipped.

    A last line that is cut off (no newline and not valid JSON: a write interrupted by a crash) is
    skipped with a warning; invalid JSON anywhere else raises.

    Raises:
        InvalidInputError: unreadable file, invalid JSON, or a line that is not an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            if number == len(lines):  # the last line has no newline after it
                logger.warning("%s: skipping the cut-off last line %d (%s)", path, number, exc)
                return
            raise InvalidInputError(f"{path} line {number} is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidInputError(f"{path} line {number}: expected a JSON object")
        yield number, obj


def load_jsonl_samples(path: str | Path) -> list[EvalSample]:
    """Load our plain JSONL: ``text``, ``response``, ``image``/``images``, and ``label`` or per-task labels.

    Example line: ``{"id": "a1", "text": "How do I bake bread?", "response": null, "label": "unharmful"}``;
    with two tasks: ``{"text": ..., "response": ..., "request_label": "harmful", "response_label": "unharmful"}``.

    Raises:
        InvalidInputError: a line is malformed or an image is missing.
    """
    path = Path(path)
    samples = []
    for index, (number, record) in enumerate(iter_jsonl(path)):
        where = f"{path} line {number}"
        if "predict" in record:
            raise InvalidInputError(f"{where}: this is a predictions file; use load_predictions()")
        text, response = record.get("text"), record.get("response")
        for name, value in (("text", text), ("response", response)):
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{where}: {name!r} must be a string or null")
        images = _resolve_images(record, path.parent, where)
        if text is None and not images:
            raise InvalidInputError(f"{where}: give 'text', an image, or both")
        per_task = {t: record.get(f"{t}_label") for t in TASKS}
        if any(v is not None for v in per_task.values()):
            for task, value in per_task.items():
                if value is not None:
                    gold_label(value, task)  # validate now
            label: Any = _labels_block(per_task["request"], per_task["refusal"], per_task["response"])
        else:
            label = record.get("label")
            if label is not None and not isinstance(label, str):
                raise InvalidInputError(f"{where}: 'label' must be a string")
        samples.append(EvalSample(_record_id(record, index), text, response, label, images))
    return _check_unique(samples, path)


def _looks_vl(records: list[Any]) -> bool:
    first = records[0] if records else {}
    if not isinstance(first, dict):
        return False
    if any(k in first for k in ("messages", "conversations", "images", "image")):
        return True
    return isinstance(first.get("input"), str) and first["input"].startswith(USER_HEAD + IMAGE_MARKER)


def load_samples(path: str | Path) -> list[EvalSample]:
    """Load samples from any supported benchmark file, choosing the format from its content.

    ``.jsonl``: our plain JSONL. ``.json``: a VL benchmark when records carry chat turns or images,
    else a text benchmark.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return load_jsonl_samples(path)
    if path.suffix.lower() != ".json":
        raise InvalidInputError(f"{path}: a benchmark file must be .json (authors' formats) or .jsonl (ours)")
    records = _read_json_list(path)
    return load_vl_benchmark(path) if _looks_vl(records) else load_text_benchmark(path)


# -- benchmarks (samples + registry entries) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchmarkData:
    """The samples of one benchmark file and the registry entries (tasks) to score them for.

    Attributes:
        name: the benchmark's name (the registry's, or the file stem for a custom benchmark).
        path: where it was read from.
        samples: the samples, in file order.
        specs: one entry per task scored on this file.
    """

    name: str
    path: Path
    samples: tuple[EvalSample, ...]
    specs: tuple[BenchmarkSpec, ...]

    @property
    def folder(self) -> str:
        """Folder name of its predictions (the authors' name for known benchmarks; a file of one task of a
        benchmark the authors split, ``WildGuardTestPrompt.json``, keeps its split name)."""
        first = self.specs[0]
        if (
            len(self.specs) == 1
            and first.split_folder
            and normalize_name(self.path.name) == normalize_name(first.split_folder)
        ):
            return first.split_folder
        return first.folder

    @property
    def modality(self) -> Modality:
        return self.specs[0].modality


def _modality(samples: Iterable[EvalSample]) -> Modality:
    has_text = has_image = False
    for s in samples:
        has_text = has_text or s.text is not None
        has_image = has_image or bool(s.images)
    if has_image:
        return "text+image" if has_text else "image"
    return "text"


def _tasks_with_gold(samples: Iterable[EvalSample], specs: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
    samples = list(samples)
    return [spec for spec in specs if any(gold_for(s.label, spec) is not None for s in samples)]


def load_benchmark(path: str | Path, *, name: str | None = None, task: Task | None = None) -> BenchmarkData:
    """Load a benchmark file and match it to the registry.

    Args:
        path: the benchmark file (see :func:`load_samples` for the formats).
        name: its benchmark name (default: from the file name, e.g. ``0_1_AegisSafetyTest.json``).
        task: score only this task; required for a benchmark that is not in the registry.

    Raises:
        InvalidInputError: unreadable file, or an unknown benchmark without ``task``.
    """
    path = Path(path)
    samples = load_samples(path)
    label = name or path.name
    specs = find_benchmarks(label)
    if task is not None:
        if task not in TASKS:
            raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        specs = [s for s in specs if s.task == task]
        if not specs:
            stem = name or normalize_name(path.name) or path.stem
            custom = name or _custom_name(path)
            logger.info("%s is not a registry benchmark; scoring it as %r for the %s task", path, stem, task)
            specs = [BenchmarkSpec(custom, task, _modality(samples), len(samples), custom, in_vl_paper=False)]
    elif not specs:
        raise InvalidInputError(
            f"{path.name} is not a known benchmark; pass its name (name=...) or the task to score (task=...)"
        )
    scored = _tasks_with_gold(samples, specs)
    if not scored:
        tasks = ", ".join(s.task for s in specs)
        raise InvalidInputError(f"{path}: no sample has a gold label for the {tasks} task")
    return BenchmarkData(scored[0].name, path, tuple(samples), tuple(scored))


VLTEST_FILES = (
    "ToxicChat",
    "HarmBenchPrompt",
    "OpenAIModeration",
    "AegisSafetyTest",
    "SimpleSafetyTests",
    "WildGuardTestPrompt",
    "HarmImageTest",
    "SPA_VL_Eval",
    "HarmBenchResponse",
    "SafeRLHF",
    "BeaverTails",
    "XSTestReponseHarmful",
    "WildGuardTestResponse",
)
"""The benchmark files of GuardReasoner-VLTest, named as the authors' scripts name them (sic)."""


def load_vltest(root: str | Path, *, only: Iterable[str] | None = None) -> list[BenchmarkData]:
    """Load GuardReasoner-VLTest as the authors publish it: ``<root>/test/<Name>.json`` (or ``<root>/<Name>.json``)
    for each name of :data:`VLTEST_FILES`, images of ``HarmImageTest`` and ``SPA_VL_Eval`` aligned by index
    from the folders ``<Name>/`` beside them (see the module docs).

    Args:
        root: the downloaded dataset folder.
        only: load only these benchmarks (any name the registry matches).

    Raises:
        InvalidInputError: no such folder, a file is missing (every file of the set must be there unless
            ``only`` narrows it: a missing benchmark would silently shrink the averages), or malformed.
    """
    root = Path(root)
    base = root / "test" if (root / "test").is_dir() else root
    if not base.is_dir():
        raise InvalidInputError(f"{root} is not a folder")
    names = list(VLTEST_FILES)
    if only is not None:
        wanted = {spec.key for n in only for spec in find_benchmarks(n)}
        names = [n for n in names if any(s.key in wanted for s in find_benchmarks(n))]
        if not names:
            raise InvalidInputError(f"none of {sorted(only)} is a GuardReasoner-VLTest benchmark")
    missing = [n for n in names if not (base / f"{n}.json").is_file()]
    if missing:
        raise InvalidInputError(
            f"{base} lacks {', '.join(f'{n}.json' for n in missing)}; GuardReasoner-VLTest has "
            f"{len(VLTEST_FILES)} files (pass only=... to load a part)"
        )
    return [load_benchmark(base / f"{n}.json") for n in names]


def _custom_name(path: Path) -> str:
    stem = path.name
    for suffix in (".jsonl", ".json"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^0-9A-Za-z_.-]", "_", stem) or "benchmark"


def discover_benchmarks(folder: str | Path) -> list[Path]:
    """Benchmark files (``*.json``, ``*.jsonl``) directly in ``folder`` whose names the registry knows, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder")
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
            if find_benchmarks(path.name):
                found.append(path)
            else:
                logger.warning("skipping %s: not a known benchmark name", path)
    return found


# -- predictions ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One line of a predictions file.

    Attributes:
        prompt: the full prompt the model saw (the authors' ``prompt``).
        label: the gold label as the benchmark gives it.
        predict: what the model generated.
        id: the sample id (our files; None in the authors' files).
        status: our Guard status (``ok``, ``parse_error``, ``invalid_input``, ``engine_error``), when written.
        completion_tokens: tokens generated, when known.
        line: line number in the file.
    """

    prompt: str
    label: str | None
    predict: str
    id: str | None = None
    status: str | None = None
    completion_tokens: int | None = None
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _authors_vl_row(obj: dict[str, Any], where: str, task: Task | None) -> tuple[str, str, Any]:
    """``(prompt, output, label)`` of a row the authors' VL generation script wrote."""
    output = obj["text_output"]
    if not isinstance(output, str):
        raise InvalidInputError(f"{where}: 'text_output' must be a string (the model's output)")
    label, label_res = obj.get("label"), obj.get("label_res")
    for name, value in (("label", label), ("label_res", label_res)):
        if value is not None and not isinstance(value, str):
            raise InvalidInputError(f"{where}: {name!r} must be a string or null")
    if "label_res" in obj:  # SPA-VL-Eval: one file, both tasks
        label = _labels_block(label, None, label_res)
    elif isinstance(label, str) and task is not None and not _GOLD_LINE.search(label):
        label = _labels_block(*(label if task == t else None for t in ("request", "refusal", "response")))
    return str(obj.get("text_input") or ""), output, label


def load_predictions(path: str | Path, *, task: Task | None = None) -> list[PredictionRecord]:
    """Load a predictions JSONL (``prompt``, ``label``, ``predict`` per line, extra fields kept).

    Rows in the authors' VL layout (``text_output`` present) are read as: prompt ``text_input``, output
    ``text_output``, gold ``label`` (and ``label_res`` for the response task of SPA-VL-Eval: the two become
    one ``Request:`` / ``Response:`` block); their ``predict``/``predict_res`` (the script's own reading of
    the output) stay in ``extra``.

    Args:
        path: the file.
        task: the one task the file is for, when it is one split of a benchmark scored on several tasks
            (``WildGuardTestPrompt``): a bare gold label of an authors' VL row then belongs to that task.

    Raises:
        InvalidInputError: a line is not an object with a string ``predict`` (or ``text_output``).
    """
    path = Path(path)
    records = []
    for number, obj in iter_jsonl(path):
        where = f"{path} line {number}"
        authors_vl = "text_output" in obj
        predict: Any
        label: Any
        if authors_vl:
            prompt, predict, label = _authors_vl_row(obj, where, task)
            obj = {**obj, "prompt": prompt}
        else:
            predict, label = obj.get("predict"), obj.get("label")
        if not isinstance(predict, str):
            raise InvalidInputError(f"{where}: 'predict' must be a string (the model's output)")
        if label is not None and not isinstance(label, str):
            raise InvalidInputError(f"{where}: 'label' must be a string or null")
        usage = obj.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        records.append(
            PredictionRecord(
                prompt=str(obj.get("prompt") or ""),
                label=label,
                predict=predict,
                id=None if obj.get("id") is None else str(obj["id"]),
                status=obj.get("status") if isinstance(obj.get("status"), str) else None,
                completion_tokens=tokens if isinstance(tokens, int) else None,
                line=number,
                extra={
                    k: v
                    for k, v in obj.items()
                    if k not in ("prompt", "label", "text_input", "text_output") and (authors_vl or k != "predict")
                },
            )
        )
    return records


@dataclass(frozen=True, slots=True)
class PredictionsFile:
    """A predictions file found in a folder and the registry entries it is scored for."""

    folder: str
    path: Path
    specs: tuple[BenchmarkSpec, ...]


def discover_predictions(root: str | Path) -> tuple[list[PredictionsFile], list[str]]:
    """Find ``<Benchmark>/generated_predictions.jsonl`` under ``root`` (or ``root/predictions``).

    Folder names are matched to the registry (so the authors' ``XSTestReponseHarmful`` works).

    Returns:
        ``(files, unknown)``: the files found with their registry entries, and the folder names that match
        no benchmark (not scored).

    Raises:
        InvalidInputError: ``root`` is not a folder or holds no predictions at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder")
    has_files = any((p / PREDICTIONS_FILE).is_file() for p in root.iterdir() if p.is_dir())
    if not has_files and (root / "predictions").is_dir():
        root = root / "predictions"
    files: list[PredictionsFile] = []
    unknown: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        path = sub / PREDICTIONS_FILE
        if not path.is_file():
            continue
        specs = find_benchmarks(sub.name)
        if specs:
            files.append(PredictionsFile(sub.name, path, tuple(specs)))
        else:
            unknown.append(sub.name)
    if not files and not unknown:
        raise InvalidInputError(f"no <Benchmark>/{PREDICTIONS_FILE} found under {root}")
    return files, unknown
