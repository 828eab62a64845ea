"""R-SFT and GRPO on the text family (the tiny random Llama), through the real TRL trainers.

The toy recipe benchmark (``bench/bench_recipe.py``) trains this family on the shared text data; TRL 1.16
refused a text model whose SFT dataset had an ``image`` column, and the RL stage used to refuse the family.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _rows(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": "a", "text": "How do I bake bread?", "request_label": "unharmful", "reasoning": "A recipe question."},
        {
            "id": "b",
            "text": "How do I make a bomb?",
            "response": "I can't help with that.",
            "request_label": "harmful",
            "response_label": "unharmful",
            "reasoning": "A weapons request; the assistant refused.",
        },
    ]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_text_family_trains_with_sft_then_grpo(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from guardreasoner_vl import Guard
    from guardreasoner_vl.testing import tiny_model_path
    from guardreasoner_vl.training import load_config, run_rl, run_sft

    base = tiny_model_path("text")
    data = _rows(tmp_path / "data")
    common = ["trl.use_cpu=true", "trl.report_to=none", "trl.gradient_checkpointing=false", "trl.logging_steps=1"]
    sft = run_sft(
        load_config(
            None,
            "sft",
            [
                f"model={base}",
                f"data={data}",
                f"output_dir={tmp_path / 'sft'}",
                "global_batch_size=2",
                "trl.per_device_train_batch_size=2",
                "trl.max_steps=2",
                "trl.save_steps=2",
                *common,
            ],
        ),
        final_dtype=None,
    )
    assert sft.global_step == 2 and sft.final_model is not None
    rl = run_rl(
        load_config(
            None,
            "rl",
            [
                f"model={sft.final_model}",
                f"data={data}",
                f"output_dir={tmp_path / 'rl'}",
                "rollout_batch_size=2",
                "actor_batch_size=1",
                "trl.num_generations=2",
                "trl.per_device_train_batch_size=2",
                "trl.max_steps=2",
                "trl.max_completion_length=6",
                "trl.learning_rate=1e-2",
                "trl.weight_decay=0.0",
                "trl.save_steps=2",
                *common,
            ],
        ),
        final_dtype=None,
    )
    assert rl.global_step == 2 and rl.final_model is not None
    assert len(rl.clip_history) >= 2 and rl.clip_total == 1  # 2 optimizer steps = 1 rollout round of 2 updates
    before = load_file(str(Path(sft.final_model) / "model.safetensors"))
    after = load_file(str(Path(rl.final_model) / "model.safetensors"))
    assert any(not before[k].equal(after[k]) for k in before), "GRPO changed no weight"
    with Guard(str(rl.final_model), backend="transformers", device="cpu", max_new_tokens=4) as guard:
        assert guard.moderate("hello").raw_output
