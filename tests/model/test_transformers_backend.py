"""The transformers engine on tiny random checkpoints (real Qwen2.5-VL and Llama classes, CPU)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from guardreasoner_vl import Guard, GuardResult, InputLimits, ModelFamily, ModelLoadError  # noqa: E402
from guardreasoner_vl.backends.base import SamplingParams  # noqa: E402
from guardreasoner_vl.inputs import smart_resize  # noqa: E402


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), bytes(rng.randrange(256) for _ in range(width * height * 3)))


@pytest.fixture(scope="module")
def guard(tiny_vl_path):
    with Guard(tiny_vl_path, backend="transformers", max_new_tokens=10) as g:
        yield g


ITEMS = [
    {"text": "hello there"},
    {"text": "what is in this picture of a cat?", "image": noise(90, 60, 1)},
    {"image": noise(200, 120, 2)},
    {"image": noise(200, 120, 3)},
    {"text": "a much longer request text about many different things and more", "response": "ok then"},
    {"text": "short", "image": noise(64, 300, 4), "response": "a reply"},
]


def test_loads_real_classes_on_cpu(guard):
    backend = guard.backend
    assert guard.family is ModelFamily.VL
    assert type(backend.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert backend.device == "cpu" and backend.dtype == torch.float32
    assert type(backend.image_processor).__name__.endswith("Pil")  # no torchvision needed
    assert guard.params.max_new_tokens == 10


def test_every_input_kind_returns_a_result(guard):
    for item in ITEMS:
        result = guard.moderate(item.get("text"), item.get("image"), response=item.get("response"))
        assert isinstance(result, GuardResult)
        assert result.usage.prompt_tokens and result.usage.completion_tokens
        assert result.raw_output  # random weights still generate text
        # random weights produce no verdicts: the default policy flags instead of calling it safe
        if result.status == "parse_error":
            assert result.flagged


def test_batched_generation_equals_one_at_a_time(guard):
    """Left padding, attention masks, image order and 3D positions are right if batching changes nothing."""
    batched = guard.moderate_batch(ITEMS)
    single = [guard.moderate_batch([item])[0] for item in ITEMS]
    assert [r.raw_output for r in batched] == [r.raw_output for r in single]
    assert [r.usage.prompt_tokens for r in batched] == [r.usage.prompt_tokens for r in single]
    assert len({r.raw_output for r in batched}) >= 4  # the inputs really lead to different outputs


def test_images_reach_the_model(guard):
    a = guard.moderate("describe", noise(120, 120, 10)).raw_output
    b = guard.moderate("describe", noise(120, 120, 11)).raw_output
    assert a != b


def test_batch_size_splits_work(tiny_vl_path):
    with Guard(tiny_vl_path, backend="transformers", max_new_tokens=6, batch_size=2) as small:
        chunked = [r.raw_output for r in small.moderate_batch(ITEMS)]
    with Guard(tiny_vl_path, backend="transformers", max_new_tokens=6, batch_size=16) as big:
        whole = [r.raw_output for r in big.moderate_batch(ITEMS)]
    assert chunked == whole


def test_greedy_is_deterministic_and_sampling_is_seeded(guard):
    assert guard.moderate("same").raw_output == guard.moderate("same").raw_output
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    first = guard.moderate_batch(["same"], sampling=params)[0].raw_output
    again = guard.moderate_batch(["same"], sampling=params)[0].raw_output
    assert first == again


def test_async_moderate(guard):
    result = asyncio.run(guard.amoderate("hello there"))
    assert result.raw_output == guard.moderate("hello there").raw_output


def test_smart_resize_agrees_with_transformers_and_no_second_resize(guard):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rng = random.Random(0)
    for _ in range(200):
        h, w = rng.randint(10, 5000), rng.randint(10, 5000)
        if max(h, w) / min(h, w) > 200:
            continue
        ours = smart_resize(h, w)
        theirs = hf_smart_resize(h, w, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28)
        assert ours == theirs, (h, w)
    prepared = guard.prepare("x", noise(333, 222, 5)).request.image
    grid = guard.backend.image_processor(images=[prepared], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert grid == [1, prepared.height // 14, prepared.width // 14]


def test_lower_max_pixels_reaches_the_processor(tiny_vl_path):
    limits = InputLimits(max_pixels=64 * 28 * 28)
    with Guard(tiny_vl_path, backend="transformers", max_new_tokens=2, limits=limits) as g:
        request = g.prepare("x", noise(1000, 1000, 6)).request
        assert request.image.width * request.image.height <= 64 * 28 * 28
        n_pads = g.backend.encode(request).count(g.backend.encoder.token_id("<|image_pad|>"))
        assert n_pads == (request.image.width // 28) * (request.image.height // 28)


def test_prompt_longer_than_context_is_reported(tiny_vl_path):
    with Guard(tiny_vl_path, backend="transformers", max_new_tokens=32_700) as g:  # context is 32768
        results = g.moderate_batch(["fine", "also fine"])
    assert all(r.status == "engine_error" and "context" in (r.error or "") for r in results)


def test_text_family_model(tiny_text_path):
    with Guard(tiny_text_path, backend="transformers", max_new_tokens=8) as g:
        assert g.family is ModelFamily.TEXT
        assert type(g.backend.model).__name__ == "LlamaForCausalLM"
        batch = g.moderate_batch(["hi", {"text": "longer request here", "response": "a response"}])
        single = [g.moderate("hi"), g.moderate("longer request here", response="a response")]
        assert [r.raw_output for r in batch] == [r.raw_output for r in single]


def test_bad_checkpoint_path(tmp_path: Path):
    with pytest.raises(ModelLoadError):
        Guard(tmp_path / "missing", backend="transformers", family="vl")


def test_close_releases_the_model(tiny_vl_path):
    g = Guard(tiny_vl_path, backend="transformers", max_new_tokens=2)
    g.close()
    assert g.backend.model is None


def test_text_checkpoint_under_a_vl_named_folder_loads_as_text(tiny_text_path, tmp_path: Path):
    import shutil

    moved = tmp_path / "GuardReasoner-VL-stuff" / "checkpoint"
    shutil.copytree(tiny_text_path, moved)
    with Guard(moved, backend="transformers", max_new_tokens=4) as g:
        assert g.family is ModelFamily.TEXT
        assert type(g.backend.model).__name__ == "LlamaForCausalLM"
        assert g.moderate("hi").model == str(moved)


def test_family_conflict_with_the_engine_is_an_error(tiny_text_path):
    from guardreasoner_vl import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"family='vl'.*'text' family"):
        Guard(tiny_text_path, backend="remote", family="vl", backend_options={"family": "text"})
    with Guard(tiny_text_path, backend="transformers", family="text", max_new_tokens=2) as g:
        assert g.family is ModelFamily.TEXT


def test_demo_text_family_runs_from_the_default_cache(capsys):
    """``demo --family text`` builds its checkpoint under a folder called ``guardreasoner_vl`` (the cache)."""
    import json

    from guardreasoner_vl.cli import main
    from guardreasoner_vl.testing import tiny_model_path

    assert "guardreasoner_vl" in tiny_model_path("text").parts  # the cache folder name that once meant "VL"
    assert main(["demo", "--family", "text", "--max-new-tokens", "4", "--json", "hello"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] in ("ok", "parse_error")
