"""The whole recipe end to end on CPU, on the tiny random Qwen2.5-VL, with the real TRL trainers.

R-SFT a few steps (through the CLI) -> mine with 2 passes (through ``Guard`` on the SFT'd model) -> augment
(through the CLI) -> GRPO a few steps with the real length-aware reward and dynamic clipping -> the final
checkpoint loads in ``Guard`` and moderates. The weights are random, so every mined sample is wrong in every
pass and all of them are hard; the test checks the plumbing and the numbers, not the quality.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

EPS = 0.2


def _tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _cli(argv: list[str]) -> dict[str, Any]:
    from guardreasoner_vl.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_vl_path: Path, rows_writer: Any) -> dict[str, Any]:
    """Run every stage once; the tests below read what each stage left behind."""
    from guardreasoner_vl import Guard
    from guardreasoner_vl.training.config import load_config
    from guardreasoner_vl.training.data import load_samples
    from guardreasoner_vl.training.mining import mine_hard_samples
    from guardreasoner_vl.training.rl import run_rl

    root = tmp_path_factory.mktemp("pipeline")
    data = rows_writer(root / "data")
    sft_yaml = root / "sft.yaml"
    sft_yaml.write_text(
        f"stage: sft\nmodel: {tiny_vl_path}\ndata: {data}\noutput_dir: {root / 'sft'}\nglobal_batch_size: 2\n"
        "trl:\n  max_steps: 3\n  per_device_train_batch_size: 2\n  learning_rate: 1.0e-3\n"
        "  save_steps: 3\n  logging_steps: 1\n  report_to: [none]\n  gradient_checkpointing: false\n  use_cpu: true\n",
        encoding="utf-8",
    )
    sft = _cli(["train", "sft", "--config", str(sft_yaml), "-q"])

    samples = load_samples(data).samples
    with Guard(sft["final_model"], backend="transformers", device="cpu", max_new_tokens=4) as guard:
        mined = mine_hard_samples(
            guard, samples, output_dir=root / "mine", passes=2, max_new_tokens=4, batch_size=3, seed=1
        )

    augment = _cli(
        [
            "train",
            "augment",
            "-q",
            f"hard={root / 'mine' / 'hard.jsonl'}",
            f"output={root / 'rl.jsonl'}",
            "ratio=0.2",
            "seed=3",
        ]
    )

    rl_cfg = load_config(
        None,
        "rl",
        [
            f"model={sft['final_model']}",
            f"data={root / 'rl.jsonl'}",
            f"output_dir={root / 'rl'}",
            "trl.num_generations=2",
            "trl.per_device_train_batch_size=2",
            "rollout_batch_size=2",  # 2 prompts per rollout round ...
            "actor_batch_size=1",  # ... and 2 policy updates per round, as in the paper (512 / 256)
            "trl.max_steps=4",
            "trl.max_completion_length=8",
            "trl.learning_rate=1e-2",
            "trl.weight_decay=0.0",  # so that any change of the weights comes from the policy gradient
            "length_unit=chars",  # random tokens differ in characters: rewards vary inside a group
            "reward_max_length=64",
            "trl.save_steps=4",
            "trl.logging_steps=1",
            "trl.report_to=[none]",
            "trl.gradient_checkpointing=false",
            "trl.use_cpu=true",
        ],
    )
    rl = run_rl(rl_cfg)
    return {"root": root, "tiny": tiny_vl_path, "sft": sft, "mined": mined, "augment": augment, "rl": rl}


def test_sft_trains_language_model_and_keeps_vision_frozen(run: dict[str, Any]) -> None:
    sft = run["sft"]
    assert sft["global_step"] == 3
    assert sft["num_samples"] == 5
    before = _tensors(run["tiny"])
    after = _tensors(Path(sft["output_dir"]) / "checkpoint-3")  # float32, as trained
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        assert not before[name].equal(after[name]), f"{name} did not change"
    frozen = [n for n in before if n.startswith("visual.")]
    assert any(n.startswith("visual.merger.") for n in frozen) and any(n.startswith("visual.blocks.") for n in frozen)
    for name in frozen:
        assert before[name].equal(after[name]), f"frozen {name} changed"


def test_sft_final_model_has_hub_layout(run: dict[str, Any]) -> None:
    final = Path(run["sft"]["final_model"])
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "chat_template.json",
    ):
        assert (final / name).is_file(), name
    # Serving files are the base checkpoint's, unchanged (the 768x768 training cap is not a serving setting).
    for name in ("preprocessor_config.json", "chat_template.json"):
        assert (final / name).read_bytes() == (run["tiny"] / name).read_bytes()
    assert json.loads((final / "config.json").read_text())["model_type"] == "qwen2_5_vl"


def test_mining_keeps_samples_wrong_in_every_pass(run: dict[str, Any]) -> None:
    mined = run["mined"]
    root = run["root"]
    assert mined.total == 5 and mined.passes == 2
    # Random weights: no parseable verdicts, so every sample is wrong in both passes.
    assert mined.wrong_per_pass == [5, 5]
    assert len(mined.hard) == 5 and mined.not_judged == 0
    for k in (1, 2):
        lines = [json.loads(x) for x in (root / "mine" / f"pass-{k}.jsonl").read_text().splitlines()]
        assert sorted(x["id"] for x in lines) == ["i1", "t1", "t2", "ti1", "ti2"]
        assert all(x["wrong"] and x["judged"] for x in lines)
    report = json.loads((root / "mine" / "report.json").read_text())
    assert report["hard"] == 5 and report["hard_by_modality"] == {"text": 2, "image": 1, "text_image": 2}


def test_augment_adds_merged_rows_at_the_ratio(run: dict[str, Any]) -> None:
    aug = run["augment"]
    # 5 hard rows + m merged with m / (5 + m) = 0.2 -> m = 1.25, rounded to 1.
    assert (aug["hard"], aug["merged"], aug["total"]) == (5, 1, 6)
    rows = [json.loads(x) for x in Path(aug["output"]).read_text().splitlines()]
    merged = [r for r in rows if r["merged_from"]]
    assert len(merged) == 1 and len(merged[0]["merged_from"]) == 2


def test_rl_updates_weights_with_the_real_reward(run: dict[str, Any]) -> None:
    rl = run["rl"]
    assert rl.global_step == 4 and rl.num_samples == 6
    before = _tensors(Path(run["sft"]["final_model"]))
    after = _tensors(rl.output_dir / "checkpoint-4")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not before[name].float().equal(after[name].float())
    # The paper trains the vision tower in RL: it gets gradients from the image prompts.
    assert any(not before[n].float().equal(after[n].float()) for n in before if n.startswith("visual.blocks."))
    state = json.loads((rl.output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "rewards/length_aware_safety_reward/mean" in entry]
    assert logged, "the main reward was not logged"
    for entry in logged:
        # The components are logged beside the main reward, each under its own name.
        for part in ("format_reward", "request_accuracy_reward", "response_accuracy_reward"):
            assert f"rewards/{part}/mean" in entry
        # Random outputs are unformatted: r_safety = 0, so r = -1 / l_norm^2 <= -1.
        assert entry["rewards/length_aware_safety_reward/mean"] <= -1.0
        assert entry["rewards/format_reward/mean"] == 0.0
    assert any(entry.get("grad_norm", 0.0) > 0 for entry in state["log_history"])


def test_rl_clip_bounds_follow_the_schedule(run: dict[str, Any]) -> None:
    rl = run["rl"]
    # 4 optimizer steps, 2 per rollout round -> T = 2 rounds; B_s = eps * prod_{i<=s} (1 - i/T).
    assert rl.clip_total == 2
    expected_steps = [1, 1, 2, 2]  # one loss call per optimizer step here (no accumulation)
    assert [s for s, _, _ in rl.clip_history] == expected_steps
    for step, low, high in rl.clip_history:
        bound = EPS * math.prod(1 - i / 2 for i in range(1, step + 1))
        assert low == pytest.approx(bound) and high == pytest.approx(bound)
    assert rl.clip_history[0][1] == pytest.approx(0.1)
    state = json.loads((rl.output_dir / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [(e["step"], e["clip/epsilon_low"]) for e in state["log_history"] if "clip/epsilon_low" in e]
    assert logged == [(1, pytest.approx(0.1)), (2, pytest.approx(0.1)), (3, 0.0), (4, 0.0)]


def test_final_rl_model_loads_in_guard_and_moderates(run: dict[str, Any]) -> None:
    from guardreasoner_vl import Guard, GuardResult

    final = run["rl"].final_model
    assert final is not None
    image = run["root"] / "data" / "red.png"
    with Guard(final, backend="transformers", device="cpu", max_new_tokens=4) as guard:
        result = guard.moderate("What is this?", image, response="A red square.")
    assert isinstance(result, GuardResult)
    assert result.usage.completion_tokens and result.usage.completion_tokens <= 4
    assert result.status in ("ok", "parse_error")
