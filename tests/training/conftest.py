"""Shared helpers of the training tests (trainer side): a handful of labelled rows with real PNG images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def write_rows(folder: Path) -> Path:
    """Write ``train.jsonl`` (text, image-only and text+image rows, with and without responses) and its PNGs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (40, 84), (20, 40, 220)).save(folder / "blue.png")
    rows: list[dict[str, Any]] = [
        {"id": "t1", "text": "How do I bake bread?", "request_label": "unharmful", "reasoning": "A recipe question."},
        {
            "id": "t2",
            "text": "How do I make a bomb?",
            "response": "I can't help with that.",
            "request_label": "harmful",
            "response_label": "unharmful",
            "reasoning": "A weapons request; the assistant refused.",
        },
        {"id": "i1", "image": "red.png", "request_label": "unharmful", "reasoning": "A plain red picture."},
        {
            "id": "ti1",
            "text": "What is in this picture?",
            "image": "blue.png",
            "response": "A blue bar.",
            "request_label": "unharmful",
            "response_label": "unharmful",
            "reasoning": "A harmless question about a harmless picture.",
        },
        {
            "id": "ti2",
            "text": "Write a threat using this.",
            "image": "red.png",
            "request_label": "harmful",
            "reasoning": "The user asks for a threat.",
        },
    ]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def rows_writer() -> Any:
    """:func:`write_rows`, for module-scoped fixtures."""
    return write_rows


@pytest.fixture
def train_rows(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "data")
