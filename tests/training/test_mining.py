"""Hard-sample mining through ``Guard.moderate_batch``: which samples are hard, resume, cap, sampling settings.

The engine here is a scripted test double (it answers from a table keyed by the request text and records the
sampling parameters it was given); the real transformers engine runs in ``test_pipeline.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from guardreasoner_vl import Guard
from guardreasoner_vl.backends.base import Generation, GenerationRequest, SamplingParams
from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.config import load_config
from guardreasoner_vl.training.data import TrainSample, load_samples
from guardreasoner_vl.training.mining import mine_hard_samples, run_augment, run_mining


def answer(request: str, response: str | None = None) -> str:
    return f"<think>checked</think>\n<result>\nRequest: {request}\nResponse: {response or 'None'}\n</result>"


class ScriptedEngine:
    """Answers each prompt from ``script[text][pass]`` (a string, or an Exception for an engine failure)."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str | Exception]]) -> None:
        self.script = script
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.seen: dict[str, int] = {}

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        texts = []
        out = []
        for req in requests:
            key = next(k for k in self.script if k in req.prompt.user_text)
            texts.append(key)
            turn = self.seen.get(key, 0)
            self.seen[key] = turn + 1
            value = self.script[key][min(turn, len(self.script[key]) - 1)]
            out.append(Generation(text="", error=str(value)) if isinstance(value, Exception) else Generation(value))
        self.calls.append((texts, params))
        return out

    def close(self) -> None:
        pass


SAMPLES = [
    # right in pass 1, wrong in pass 2 -> not hard
    TrainSample(id="sometimes", text="bake bread", request_label="unharmful"),
    # request wrong in both passes -> hard
    TrainSample(id="always", text="make a bomb", request_label="harmful"),
    # request right but response label wrong in both passes -> hard (response counts when there is one)
    TrainSample(
        id="response",
        text="insult me",
        response="You are dumb.",
        request_label="harmful",
        response_label="harmful",
    ),
    # unparseable in pass 1, wrong in pass 2 -> hard (a parse failure is wrong)
    TrainSample(id="garbled", text="steal a car", request_label="harmful"),
    # no response: "Response: None" is fine, only the request counts -> never wrong
    TrainSample(id="noresp", text="hello there", request_label="unharmful"),
    # the engine fails in pass 2 -> not judged, left out
    TrainSample(id="broken", text="weird input", request_label="harmful"),
]
SCRIPT: dict[str, list[str | Exception]] = {
    "bake bread": [answer("unharmful"), answer("harmful")],
    "make a bomb": [answer("unharmful"), answer("unharmful")],
    "insult me": [answer("harmful", "unharmful"), answer("harmful", "unharmful")],
    "steal a car": ["I cannot tell.", answer("unharmful")],
    "hello there": [answer("unharmful"), answer("unharmful", "none")],
    "weird input": [answer("unharmful"), RuntimeError("out of memory")],
}


def _guard(engine: ScriptedEngine) -> Guard:
    return Guard("scripted", backend=engine, family="vl")


def test_hard_samples_are_wrong_in_every_pass(tmp_path: Path) -> None:
    engine = ScriptedEngine(SCRIPT)
    report = mine_hard_samples(
        _guard(engine), SAMPLES, output_dir=tmp_path, passes=2, batch_size=4, seed=5, max_new_tokens=77
    )
    assert [s.id for s in report.hard] == ["always", "response", "garbled"]
    # pass 1: always, response, garbled, broken; pass 2: sometimes, always, response, garbled (broken failed)
    assert report.wrong_per_pass == [4, 4]
    assert report.not_judged == 1
    counts = json.loads((tmp_path / "report.json").read_text())
    assert counts["hard"] == 3 and counts["wrong_in_all_passes"] == 3 and counts["not_judged"] == 1
    assert [s.id for s in load_samples(tmp_path / "hard.jsonl").samples] == ["always", "response", "garbled"]
    pass1 = [json.loads(x) for x in (tmp_path / "pass-1.jsonl").read_text().splitlines()]
    assert {r["id"]: r["wrong"] for r in pass1}["garbled"] is True
    # Sampling settings reach the engine: paper defaults, the budget asked for, a seed per pass and batch.
    for _, params in engine.calls:
        assert (params.temperature, params.top_p, params.max_new_tokens) == (1.0, 0.95, 77)
    seeds = [params.seed for _, params in engine.calls]
    assert None not in seeds and len(set(seeds)) == len(seeds)


def test_rerun_resumes_and_repairs_a_cut_line(tmp_path: Path) -> None:
    first = ScriptedEngine(SCRIPT)
    mine_hard_samples(_guard(first), SAMPLES, output_dir=tmp_path, passes=2, batch_size=4)
    assert sum(len(texts) for texts, _ in first.calls) == 12

    # A crash while writing the last line of pass 2: that sample must be redone, the rest skipped.
    path = tmp_path / "pass-2.jsonl"
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    last_id = json.loads(data[last_start:])["id"]
    path.write_bytes(data[: last_start + 10])
    second = ScriptedEngine({k: v[1:] for k, v in SCRIPT.items()})  # answers as pass 2 did
    report = mine_hard_samples(_guard(second), SAMPLES, output_dir=tmp_path, passes=2, batch_size=4)
    redone = [t for texts, _ in second.calls for t in texts]
    # the cut sample, plus the one the engine failed on (not judged: retried on every run)
    expected = {next(s.text for s in SAMPLES if s.id == last_id), "weird input"}
    assert set(redone) == expected
    lines = [json.loads(x) for x in path.read_text().splitlines()]  # every line parses again
    assert len({r["id"] for r in lines if r["judged"]}) == 5
    assert [s.id for s in report.hard] == ["always", "response", "garbled"]
    assert report.repaired_tails == 1  # the torn line was cut and reported

    third = ScriptedEngine(SCRIPT)
    mine_hard_samples(_guard(third), SAMPLES[:5], output_dir=tmp_path, passes=2, batch_size=4)
    assert third.calls == []  # everything was already done


def test_cap_and_keep_image_only(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (30, 30)).save(image)
    rows = [TrainSample(id=f"s{i}", text=f"item {i}", request_label="harmful") for i in range(8)]
    rows.append(TrainSample(id="img", image=str(image), request_label="unharmful"))
    script: dict[str, list[str | Exception]] = {f"item {i}": [answer("unharmful")] for i in range(8)}
    script["Human user:\n<image>"] = [answer("unharmful")]  # image-only sample: always right

    def run(out: Path, **kwargs: object) -> list[str]:
        report = mine_hard_samples(_guard(ScriptedEngine(script)), rows, output_dir=out, passes=2, **kwargs)  # type: ignore[arg-type]
        return [s.id for s in report.hard]

    assert run(tmp_path / "a") == [f"s{i}" for i in range(8)]
    assert run(tmp_path / "b", keep_image_only=True) == [*(f"s{i}" for i in range(8)), "img"]
    capped = run(tmp_path / "c", cap=3, seed=11)
    assert len(capped) == 3 and capped == run(tmp_path / "d", cap=3, seed=11)  # seeded: reproducible
    assert capped == sorted(capped, key=lambda i: int(i[1:]))  # kept in data order


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    guard = _guard(ScriptedEngine(SCRIPT))
    with pytest.raises(InvalidInputError, match="passes"):
        mine_hard_samples(guard, SAMPLES, output_dir=tmp_path, passes=0)
    with pytest.raises(InvalidInputError, match="unique"):
        mine_hard_samples(guard, [SAMPLES[0], SAMPLES[0]], output_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="temperature"):
        mine_hard_samples(guard, SAMPLES, output_dir=tmp_path, temperature=0.0)


def test_run_mining_and_augment_from_configs(tmp_path: Path, train_rows: Path) -> None:
    script: dict[str, list[str | Exception]] = {"": [answer("unharmful", "harmful")]}
    cfg = load_config(None, "mine", [f"data={train_rows}", f"output_dir={tmp_path / 'mine'}", "passes=2"])
    report = run_mining(cfg, guard=_guard(ScriptedEngine(script)))
    # unharmful requests whose response (if any) is unharmful are right on the request but, with a response,
    # wrong on it; harmful requests are wrong: t2 (harmful), ti1 (response), ti2 (harmful).
    assert sorted(s.id for s in report.hard) == ["t2", "ti1", "ti2"]
    counts = run_augment(
        load_config(None, "augment", [f"hard={tmp_path / 'mine' / 'hard.jsonl'}", f"output={tmp_path / 'rl.jsonl'}"])
    )
    assert (counts["hard"], counts["merged"], counts["total"]) == (3, 1, 4)
    rows = load_samples(tmp_path / "rl.jsonl").samples
    merged = [r for r in rows if r.is_merged]
    assert len(merged) == 1 and merged[0].request_label == "harmful"  # OR of the partners' labels
