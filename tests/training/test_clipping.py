"""Dynamic clipping inside the real TRL GRPOTrainer, on the tiny Qwen2.5-VL.

The bounds are read from TRL's own ratio clamp, ``torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)``,
while the loss runs: that is what the loss used, whatever our trainer believes it set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _rows(image_path: Path) -> list[dict[str, Any]]:
    from guardreasoner_vl.training.data import TrainSample, to_rl_record

    samples = [
        TrainSample(id="t0", text="How do I bake bread?", request_label="unharmful"),
        TrainSample(id="i0", text="What is this?", image=str(image_path), request_label="harmful"),
        TrainSample(id="t1", text="Hi", response="Hello!", request_label="unharmful", response_label="unharmful"),
        TrainSample(id="i1", image=str(image_path), request_label="unharmful"),
    ]
    return [to_rl_record(s) for s in samples]


def _trainer(tiny_vl_path: Path, out: Path, rows: list[dict[str, Any]], *, dynamic: bool, max_steps: int, used: list):
    import datasets
    import torch
    import transformers
    import trl

    from guardreasoner_vl.training.clipping import DynamicClipGRPOTrainer
    from guardreasoner_vl.training.processing import load_processor
    from guardreasoner_vl.training.rewards import reward_functions

    class RecordingTrainer(DynamicClipGRPOTrainer):  # type: ignore[misc, valid-type]
        """Spies on torch.clamp during the loss and keeps the (step, low, high) of TRL's ratio clamp."""

        def _compute_loss(self, model: Any, inputs: Any) -> Any:
            real = torch.clamp
            bounds: list[tuple[float, float]] = []

            def spy(tensor: Any, *args: Any, **kwargs: Any) -> Any:
                if len(args) == 2 and not kwargs:  # clamp(coef_1, 1 - eps_low, 1 + eps_high)
                    bounds.append((float(args[0]), float(args[1])))
                return real(tensor, *args, **kwargs)

            torch.clamp = spy
            try:
                loss = super()._compute_loss(model, inputs)
            finally:
                torch.clamp = real
            assert len(bounds) == 1, bounds
            low, high = bounds[0]
            used.append((self.state.global_step + 1, 1.0 - low, high - 1.0))
            return loss

    funcs, weights = reward_functions(max_length=4)
    args = trl.GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        num_generations=2,
        gradient_accumulation_steps=2,  # two loss calls per optimizer step: both must use the same bound
        max_completion_length=4,
        gradient_checkpointing=False,
        max_steps=max_steps,
        learning_rate=1e-3,
        beta=0.0,
        temperature=1.2,
        epsilon=0.2,
        reward_weights=weights,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    return RecordingTrainer(
        model=transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl_path),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=load_processor(tiny_vl_path),
        reward_funcs=funcs,
        dynamic_clipping=dynamic,
    )


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def test_loss_uses_the_dynamic_clip_bound_at_every_step_and_after_resume(
    tiny_vl_path: Path, tmp_path: Path, image_path
):
    rows = _rows(image_path)
    used: list[tuple[int, float, float]] = []
    trainer = _trainer(tiny_vl_path, tmp_path / "run", rows, dynamic=True, max_steps=3, used=used)
    trainer.train()

    # B_s = 0.2 * prod_{i=1..s} (1 - i/3): 0.2*2/3, then *1/3, then *0
    expected = {1: 0.2 * 2 / 3, 2: 0.2 * 2 / 9, 3: 0.0}
    assert [s for s, _, _ in used] == [1, 1, 2, 2, 3, 3]  # two micro-batches per optimizer step
    for step, low, high in used:
        assert low == pytest.approx(expected[step], abs=1e-9)
        assert high == pytest.approx(expected[step], abs=1e-9)
    assert [(s, round(lo, 9), round(hi, 9)) for s, lo, hi in trainer.clip_history] == [
        (s, round(lo, 9), round(hi, 9)) for s, lo, hi in used
    ]
    logged = [h["clip/epsilon_low"] for h in trainer.state.log_history if "clip/epsilon_low" in h]
    assert logged == pytest.approx([0.2 * 2 / 3, 0.2 * 2 / 9, 0.0])

    # Resume from the step-2 checkpoint: the schedule continues at step 3 (global_step comes from the checkpoint).
    resumed: list[tuple[int, float, float]] = []
    again = _trainer(tiny_vl_path, tmp_path / "run", rows, dynamic=True, max_steps=3, used=resumed)
    again.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert [(s, lo) for s, lo, _ in resumed] == [(3, 0.0), (3, 0.0)]
    assert again.state.global_step == 3


def test_without_dynamic_clipping_the_loss_keeps_trl_fixed_bound(tiny_vl_path: Path, tmp_path: Path, image_path):
    # The control: the same spy sees TRL's constant 0.2, so the test above can tell the two apart.
    used: list[tuple[int, float, float]] = []
    trainer = _trainer(tiny_vl_path, tmp_path / "fixed", _rows(image_path), dynamic=False, max_steps=1, used=used)
    trainer.train()
    assert [s for s, _, _ in used] == [1, 1]
    assert all(lo == pytest.approx(0.2) and hi == pytest.approx(0.2) for _, lo, hi in used)
    assert trainer.clip_history == []


def test_processor_for_trl_takes_mixed_batches_and_saves_the_standard_class(tiny_vl_path: Path, tmp_path: Path):
    """The processor these trainers use (load_processor): a text-only prompt's ``None`` inside a batch with images,
    as TRL 1.16 GRPO passes it, and a saved config that names Qwen2_5_VLProcessor."""
    import json
    import pickle

    from PIL import Image

    from guardreasoner_vl.training.processing import load_processor

    processor = load_processor(tiny_vl_path, max_pixels=56 * 56)
    image = Image.new("RGB", (200, 100), (10, 200, 10))
    slot = "<|vision_start|><|image_pad|><|vision_end|>"
    out = processor(images=[[image], None], text=[slot + "look", "no image"], padding=True, return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 2, 4]]  # 200x100 under 56*56 pixels -> 56x28 -> 4x2 patches
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (out["input_ids"][0] == pad_id).sum().item() == 2  # 8 patches / (2x2 merge)
    assert (out["input_ids"][1] == pad_id).sum().item() == 0
    processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"
    assert type(pickle.loads(pickle.dumps(processor))).__name__ == "Qwen2_5_VLImageTextProcessor"
