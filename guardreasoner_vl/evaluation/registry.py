"""The benchmarks of the paper, as benchmark/task pairs (reference page, section 6).

The GuardReasoner-VL paper scores 14 benchmark/task pairs: 8 for the request task (is the user's request
harmful?) and 6 for the response task (is the AI's response harmful?). WildGuardTest and SPA-VL-Eval
appear under both tasks; the authors keep one predictions file for such a benchmark and score it once per
task. The text-only GuardReasoner paper adds a third task, refusal detection; its XSTest split is here
too (``in_vl_paper=False``) because the released 1B predictions include it.

Names are matched loosely (:func:`find_benchmarks`): case and punctuation are ignored, the authors' file
prefixes (``0_6_xstest_response_harmful.json``) are dropped, and the authors' folder spelling
``XSTestReponseHarmful`` (sic) maps to ``XSTestResponseHarmful``.

The GuardReasoner-VL authors keep WildGuardTest as two files, ``WildGuardTestPrompt`` (request task) and
``WildGuardTestResponse`` (response task), and spell SPA-VL-Eval ``SPA_VL_Eval``; these names match too, each
split name to its one task (:attr:`BenchmarkSpec.split_folder` is its predictions folder in that layout).

Example:
    >>> [b.task for b in find_benchmarks("WildGuardTest")]
    ['request', 'response']
    >>> get_benchmark("XSTestReponseHarmful").name
    'XSTestResponseHarmful'
    >>> get_benchmark("0_3_harmbench_prompt.json").key
    'HarmBenchPrompt/request'
    >>> [b.key for b in find_benchmarks("WildGuardTestResponse")]
    ['WildGuardTest/response']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from guardreasoner_vl.errors import InvalidInputError

__all__ = [
    "BENCHMARKS",
    "TASKS",
    "BenchmarkSpec",
    "Modality",
    "Task",
    "find_benchmarks",
    "get_benchmark",
    "normalize_name",
    "paper_benchmarks",
    "positive_label",
]

Task = Literal["request", "response", "refusal"]
"""``request``: is the user's request harmful? ``response``: is the AI's response harmful?
``refusal``: did the AI refuse (text family only)?"""
Modality = Literal["text", "image", "text+image"]

TASKS: tuple[Task, ...] = ("request", "response", "refusal")


def positive_label(task: Task) -> str:
    """The positive class of a task: ``harmful``, or ``refusal`` for the refusal task."""
    return "refusal" if task == "refusal" else "harmful"


@dataclass(frozen=True, slots=True)
class BenchmarkSpec:
    """One benchmark/task pair.

    Attributes:
        name: the paper's name of the benchmark (``SPA-VL-Eval``, ``XSTestResponseHarmful``, ...).
        task: which verdict it scores.
        modality: ``text``, ``image`` or ``text+image``; ``Avg (Text)`` averages the ``text`` ones.
        size: number of samples in the paper.
        folder: the folder name the authors use for its predictions (``<folder>/generated_predictions.jsonl``).
        aliases: other names it goes by (file stems, spellings); matched after :func:`normalize_name`.
        label_block: the authors' gold labels for it are an ``Answers:`` block rather than one label, and
            their scorer reads the label with the verdict regex (SafeRLHF, BeaverTails, WildGuardTest).
        in_vl_paper: one of the 14 pairs of the GuardReasoner-VL paper.
        split_folder: for a benchmark scored on several tasks, the authors' VL name of this task's own file
            and predictions folder (``WildGuardTestPrompt``); None when one file serves every task.
    """

    name: str
    task: Task
    modality: Modality
    size: int
    folder: str
    aliases: tuple[str, ...] = ()
    label_block: bool = False
    in_vl_paper: bool = True
    split_folder: str | None = None

    @property
    def key(self) -> str:
        """``"<name>/<task>"``, unique in :data:`BENCHMARKS`."""
        return f"{self.name}/{self.task}"

    @property
    def positive(self) -> str:
        """The positive label of the task (``harmful`` or ``refusal``)."""
        return positive_label(self.task)


def _spec(
    name: str,
    task: Task,
    modality: Modality,
    size: int,
    *aliases: str,
    folder: str | None = None,
    label_block: bool = False,
    in_vl_paper: bool = True,
    split_folder: str | None = None,
) -> BenchmarkSpec:
    if split_folder is not None:
        aliases = (*aliases, split_folder)
    return BenchmarkSpec(name, task, modality, size, folder or name, aliases, label_block, in_vl_paper, split_folder)


BENCHMARKS: tuple[BenchmarkSpec, ...] = (
    # request harmfulness
    _spec("ToxicChat", "request", "text", 2853, "toxic_chat"),
    _spec("OpenAIModeration", "request", "text", 1680, "openai_moderation"),
    _spec("AegisSafetyTest", "request", "text", 359, "aegis_safety_test", "aegis"),
    _spec("SimpleSafetyTests", "request", "text", 100, "simple_safety_tests"),
    _spec("HarmBenchPrompt", "request", "text", 239, "harmbench_prompt"),
    _spec(
        "WildGuardTest",
        "request",
        "text",
        1756,
        "wild_guard_test",
        "wildguard",
        label_block=True,
        split_folder="WildGuardTestPrompt",
    ),
    _spec("HarmImageTest", "request", "image", 3295, "harm_image_test"),
    _spec("SPA-VL-Eval", "request", "text+image", 3282, "spa_vl_eval", "spavl", folder="SPA_VL_Eval"),
    # response harmfulness
    _spec("HarmBenchResponse", "response", "text", 602, "harmbench_response"),
    _spec("SafeRLHF", "response", "text", 2000, "safe_rlhf", "pku_safe_rlhf", label_block=True),
    _spec("BeaverTails", "response", "text", 3021, "beaver_tails", label_block=True),
    _spec(
        "XSTestResponseHarmful",
        "response",
        "text",
        446,
        "XSTestReponseHarmful",
        "xstest_response_harmful",
        folder="XSTestReponseHarmful",
    ),
    _spec(
        "WildGuardTest",
        "response",
        "text",
        1768,
        "wild_guard_test",
        "wildguard",
        label_block=True,
        split_folder="WildGuardTestResponse",
    ),
    _spec("SPA-VL-Eval", "response", "text+image", 3282, "spa_vl_eval", "spavl", folder="SPA_VL_Eval"),
    # refusal detection (text family; GuardReasoner paper, not the VL paper)
    _spec(
        "XSTestResponseRefusal",
        "refusal",
        "text",
        449,
        "XSTestReponseRefusal",
        "xstest_response_refusal",
        in_vl_paper=False,
    ),
)
"""Every known benchmark/task pair, in the paper's column order (request, then response, then refusal)."""

_PREFIX = re.compile(r"^\d+_[0-9a-z]_", re.IGNORECASE)  # the authors' file prefixes: 0_6_, 0_A_
_SUFFIXES = (".jsonl", ".json")


def normalize_name(name: str) -> str:
    """Lower-case alphanumerics of a benchmark, file or folder name (prefix and extension dropped).

    Example:
        >>> normalize_name("0_A_beaver_tails.json"), normalize_name("SPA-VL-Eval")
        ('beavertails', 'spavleval')
    """
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    lowered = base.lower()
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = _PREFIX.sub("", base)
    return re.sub(r"[^0-9a-z]", "", base.lower())


def _names(spec: BenchmarkSpec) -> set[str]:
    return {normalize_name(n) for n in (spec.name, spec.folder, *spec.aliases)}


def find_benchmarks(name: str) -> list[BenchmarkSpec]:
    """Every registry entry (one per task) whose name, folder or alias matches ``name``; may be empty.

    A split name (``WildGuardTestPrompt``) matches only its own task.
    """
    wanted = normalize_name(name)
    split = [spec for spec in BENCHMARKS if spec.split_folder and normalize_name(spec.split_folder) == wanted]
    return split or [spec for spec in BENCHMARKS if wanted in _names(spec)]


def paper_benchmarks(task: Task) -> list[BenchmarkSpec]:
    """The benchmarks a paper table of ``task`` has: the VL paper's for request/response, the text paper's
    XSTest for refusal (so a run without one of them shows the gap instead of a smaller average)."""
    return [s for s in BENCHMARKS if s.task == task and (s.in_vl_paper or task == "refusal")]


def get_benchmark(name: str, task: Task | None = None) -> BenchmarkSpec:
    """The registry entry for ``name`` (and ``task`` when the benchmark has several).

    Raises:
        InvalidInputError: unknown name, or a name with several tasks and no ``task`` given.
    """
    found = find_benchmarks(name)
    if task is not None:
        if task not in TASKS:
            raise InvalidInputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        found = [s for s in found if s.task == task]
    if not found:
        known = ", ".join(sorted({s.name for s in BENCHMARKS}))
        raise InvalidInputError(f"unknown benchmark {name!r}{f' for task {task!r}' if task else ''}; known: {known}")
    if len(found) > 1:
        raise InvalidInputError(
            f"benchmark {name!r} has several tasks ({', '.join(s.task for s in found)}); pass task="
        )
    return found[0]
