"""Shared fixtures. Everything runs offline on CPU; tiny models are built once per test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline, always: no test may reach a model or dataset hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout (override with GRVL_SHARED_DATA)."""
    path = Path(os.environ.get("GRVL_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.fail(f"shared data not found at {path}; set GRVL_SHARED_DATA", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tiny-model and tokenizer caches of the test run out of ~/.cache.

    The folder is named like the real default (``~/.cache/guardreasoner_vl``), so a family detection that
    read folder names above a checkpoint (which would make every text checkpoint in it "VL") fails here too.
    """
    os.environ["GUARDREASONER_VL_CACHE"] = str(tmp_path_factory.mktemp("cache") / "guardreasoner_vl")


@pytest.fixture(scope="session")
def tiny_vl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint with the small BPE tokenizer."""
    from guardreasoner_vl.testing import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl"))


@pytest.fixture(scope="session")
def tiny_vl_qwen_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint with Qwen2.5's real vocabulary and special-token ids."""
    from guardreasoner_vl.testing import build_tiny_vl_model

    return build_tiny_vl_model(tmp_path_factory.mktemp("tiny-vl-qwen"), tokenizer="qwen")


@pytest.fixture(scope="session")
def tiny_text_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint for the text family (head size 64)."""
    from guardreasoner_vl.testing import build_tiny_text_model

    return build_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))


@pytest.fixture(scope="session")
def verdict_vl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL trained to write verdicts (``testing.verdict_examples``), so scores can be read."""
    from guardreasoner_vl.testing import tiny_verdict_model

    return tiny_verdict_model(tmp_path_factory.mktemp("verdict-vl"), "vl")


@pytest.fixture(scope="session")
def verdict_text_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (text family) trained to write verdicts."""
    from guardreasoner_vl.testing import tiny_verdict_model

    return tiny_verdict_model(tmp_path_factory.mktemp("verdict-text"), "text")
