"""training.clipping: the schedule B_s = eps * prod_{i=1..s}(1 - i/T), and light imports."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.training.clipping import clip_decay, dynamic_clip_epsilon, dynamic_clip_schedule

ROOT = Path(__file__).resolve().parents[3]


def test_schedule_matches_the_paper_for_23_steps():
    # eps = 0.2, T = 23: B_1 = 0.2*22/23, B_2 = B_1*21/23, B_3 = B_2*20/23, B_4 = B_3*19/23
    expected = [0.2 * 22 / 23, 0.2 * 22 * 21 / 23**2, 0.2 * 22 * 21 * 20 / 23**3, 0.2 * 22 * 21 * 20 * 19 / 23**4]
    got = [dynamic_clip_epsilon(s, 23) for s in (1, 2, 3, 4)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert [round(x, 3) for x in got] == [0.191, 0.175, 0.152, 0.125]  # the values the paper lists


def test_schedule_edges():
    assert dynamic_clip_epsilon(0, 10) == 0.2
    assert dynamic_clip_epsilon(10, 10) == 0.0
    assert dynamic_clip_epsilon(25, 10) == 0.0  # never negative past T
    assert dynamic_clip_epsilon(1, 4, eps=0.3) == pytest.approx(0.3 * 0.75)
    assert dynamic_clip_schedule(4) == pytest.approx([0.15, 0.075, 0.01875, 0.0])
    values = dynamic_clip_schedule(50)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert clip_decay(1, 1) == 0.0


@pytest.mark.parametrize(
    ("step", "total", "eps"), [(-1, 10, 0.2), (1, 0, 0.2), (1.5, 10, 0.2), (1, 10, -0.1), (True, 10, 0.2)]
)
def test_schedule_refuses_bad_arguments(step, total, eps):
    with pytest.raises(InvalidInputError):
        dynamic_clip_epsilon(step, total, eps)


def test_training_modules_import_without_torch_or_trl():
    code = (
        "import sys, json\n"
        "import guardreasoner_vl.training, guardreasoner_vl.training.data, guardreasoner_vl.training.augment\n"
        "import guardreasoner_vl.training.rewards, guardreasoner_vl.training.clipping\n"
        "import guardreasoner_vl.training.processing\n"
        "from guardreasoner_vl.training import LengthAwareSafetyReward, TrainSample\n"
        "from guardreasoner_vl.training import dynamic_clip_epsilon, concatenate\n"
        "print(json.dumps(sorted({'torch', 'transformers', 'trl', 'datasets', 'peft'} & set(sys.modules))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []
