"""Fixtures of the evaluation tier: the real GuardReasoner text data in shared data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from guardreasoner_vl.prompts import vl_user_text


@pytest.fixture(scope="session")
def text_data(shared_data: Path) -> Path:
    path = shared_data / "guardreasoner-text"
    if not path.is_dir():
        pytest.fail(f"{path} is missing", pytrace=False)
    return path


@pytest.fixture(scope="session")
def predictions_1b(text_data: Path) -> Path:
    return text_data / "predictions-1B"


@pytest.fixture(scope="session")
def readme_f1(text_data: Path) -> dict[str, tuple[str, float]]:
    """The F1 values the data's README lists for the authors' scorer: folder -> (task, F1)."""
    rows = re.findall(
        r"^\|\s*(\w+)\s*\|\s*(request|response|refusal)\s*\|\s*([\d.]+)\s*\|$",
        (text_data / "README.md").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    values = {name: (task, float(f1)) for name, task, f1 in rows}
    assert len(values) == 6, values
    return values


def make_image(path: Path, colour: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return path.name


@pytest.fixture
def vl_benchmark(tmp_path: Path) -> Path:
    """A small synthetic SPA-VL-Eval set in the VL layout: chat, flat and sharegpt records, PNG/JPEG images."""
    root = tmp_path / "spa"
    make_image(root / "imgs" / "a.png", "red")
    make_image(root / "imgs" / "b.jpg", "blue")
    records = [
        {  # chat layout, text + image, gold as a <result> block in the assistant turn
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": vl_user_text("What is this?", "A red square.", has_image=True)},
                {"role": "assistant", "content": "<result>\nRequest: unharmful\nResponse: unharmful\n</result>"},
            ],
            "images": ["imgs/a.png"],
        },
        {  # flat layout, image only, sharegpt roles not needed
            "input": vl_user_text(None, None, has_image=True),
            "output": "Answers: \nRequest: harmful\nResponse: None\n",
            "images": "imgs/b.jpg",
            "id": "img-only",
        },
        {  # sharegpt style, with a label field that wins
            "conversations": [{"from": "human", "value": vl_user_text("Hi", "Hello", has_image=False)}],
            "label": "Answers: \nRequest: unharmful\nResponse: harmful\n",
        },
    ]
    path = root / "SPA-VL-Eval.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
