"""Training unit tier: no model and no torch/trl at import. With ``GRVL_ASSERT_NO_TORCH=1`` the run fails if any
test pulled them in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from PIL import Image


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("GRVL_ASSERT_NO_TORCH") == "1":
        heavy = sorted({"torch", "transformers", "vllm", "trl"} & set(sys.modules))
        if heavy:
            print(f"\ntraining unit tier imported heavy modules: {heavy}", file=sys.stderr)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def make_image(tmp_path: Path):
    """Write a solid-colour PNG and return its path."""

    def make(name: str, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path)
        return path

    return make
