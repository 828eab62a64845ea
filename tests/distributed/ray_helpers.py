"""Helpers of the distributed tier's tests (rows in, rows out, the parts folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line]


def stable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its timing (the only field that differs between runs)."""
    return {**row, "usage": {**row["usage"], "latency_s": None}}


def part_rows(parts: Path) -> list[dict[str, Any]]:
    """Every row of every committed part (each part must be whole: only complete JSON lines)."""
    rows = []
    for part in sorted(parts.glob("part-*.jsonl")):
        data = part.read_bytes()
        assert data.endswith(b"\n"), f"{part.name} is not whole"
        rows.extend(json.loads(line) for line in data.splitlines())
    return rows
