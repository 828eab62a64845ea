"""Resume: a run killed after a checkpoint picks up from it and ends where an uninterrupted run ends.

R-SFT: a real training process is killed with SIGKILL right after it wrote ``checkpoint-2`` (a callback
makes it wait there, so the kill lands at a known point), then ``guardreasoner-vl train sft --resume``
finishes it. GRPO: a callback raises right after ``checkpoint-1``; the resumed run continues the dynamic
clip schedule from the checkpoint's step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MAX_STEPS = 4

HANG_AFTER_SAVE = textwrap.dedent(
    """
    import sys, time, pathlib
    from transformers import TrainerCallback
    from guardreasoner_vl.training.config import load_config
    from guardreasoner_vl.training.sft import run_sft

    class HangAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                pathlib.Path(sys.argv[2]).write_text("checkpoint-2 written")
                time.sleep(600)  # the test kills the process here

    run_sft(load_config(sys.argv[1], "sft"), callbacks=[HangAfterCheckpoint()])
    """
)


def _sft_yaml(path: Path, *, model: Path, data: Path, output_dir: Path) -> Path:
    path.write_text(
        f"stage: sft\nmodel: {model}\ndata: {data}\noutput_dir: {output_dir}\nglobal_batch_size: 2\nseed: 7\n"
        f"trl:\n  max_steps: {MAX_STEPS}\n  per_device_train_batch_size: 2\n  learning_rate: 1.0e-3\n  save_steps: 2\n"
        "  logging_steps: 1\n  report_to: [none]\n  gradient_checkpointing: false\n  use_cpu: true\n",
        encoding="utf-8",
    )
    return path


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sft_killed_after_checkpoint_resumes_to_the_same_step(
    tmp_path: Path, tiny_vl_path: Path, train_rows: Path
) -> None:
    from guardreasoner_vl.cli import main
    from guardreasoner_vl.training.config import load_config
    from guardreasoner_vl.training.sft import run_sft

    killed_dir = tmp_path / "killed"
    config = _sft_yaml(tmp_path / "sft.yaml", model=tiny_vl_path, data=train_rows, output_dir=killed_dir)
    script = tmp_path / "train_and_hang.py"
    script.write_text(HANG_AFTER_SAVE, encoding="utf-8")
    marker = tmp_path / "saved.marker"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(config), str(marker)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("training did not reach checkpoint-2 in time")
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in killed_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (killed_dir / "final").exists()

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "sft", "--config", str(config), "--resume", "-q"])
    assert code == 0
    resumed = json.loads(out.getvalue())
    assert resumed["resumed_from"].endswith("checkpoint-2")

    fresh = run_sft(load_config(config, "sft", [f"output_dir={tmp_path / 'fresh'}", "trl.report_to=[tensorboard]"]))
    assert resumed["global_step"] == fresh.global_step == MAX_STEPS
    assert list((tmp_path / "fresh" / "runs").rglob("events.out.tfevents.*")), "no TensorBoard logs"
    state = json.loads((killed_dir / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    # The resumed run trained only the steps after the checkpoint, and logged each once.
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    # Same data order, same RNG: resuming reproduces the uninterrupted run.
    a, b = _weights(killed_dir / f"checkpoint-{MAX_STEPS}"), _weights(tmp_path / "fresh" / f"checkpoint-{MAX_STEPS}")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert a[name].allclose(b[name], atol=1e-6)


def test_rl_resume_continues_the_clip_schedule(tmp_path: Path, tiny_vl_path: Path, train_rows: Path) -> None:
    from transformers import TrainerCallback

    from guardreasoner_vl.training.config import load_config
    from guardreasoner_vl.training.rl import run_rl

    class Crash(RuntimeError):
        pass

    class CrashAfterCheckpoint(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                raise Crash("simulated failure after checkpoint-1")

    overrides = [
        f"model={tiny_vl_path}",
        f"data={train_rows}",
        f"output_dir={tmp_path / 'rl'}",
        "trl.num_generations=2",
        "trl.per_device_train_batch_size=2",
        "rollout_batch_size=1",
        "actor_batch_size=1",
        "trl.max_steps=2",
        "trl.max_completion_length=4",
        "trl.save_steps=1",
        "trl.logging_steps=1",
        "trl.report_to=[none]",
        "trl.gradient_checkpointing=false",
        "trl.use_cpu=true",
        "save_final_model=false",
    ]
    with pytest.raises(Crash):
        run_rl(load_config(None, "rl", overrides), callbacks=[CrashAfterCheckpoint()])
    assert sorted(p.name for p in (tmp_path / "rl").glob("checkpoint-*")) == ["checkpoint-1"]

    resumed = run_rl(load_config(None, "rl", [*overrides, "resume_from_checkpoint=true"]))
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-1")
    assert resumed.global_step == 2
    # T = 2 rounds; this process computed only round 2, whose bound is eps * (1 - 1/2) * (1 - 2/2) = 0.
    assert resumed.clip_total == 2
    assert [(s, lo) for s, lo, _ in resumed.clip_history] == [(2, 0.0)]
