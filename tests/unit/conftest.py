"""Unit tier: no model and no torch. ``tests/test_tiers.py`` runs this tier alone and checks that."""

from __future__ import annotations

import os
import sys

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("GRVL_ASSERT_NO_TORCH") == "1":
        heavy = sorted({"torch", "transformers", "vllm", "trl"} & set(sys.modules))
        if heavy:
            print(f"\nunit tier imported heavy modules: {heavy}", file=sys.stderr)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
