"""``guardreasoner_vl.training`` exports its run functions and configs, and importing every stage module
(sft, rl, clipping, common) still loads no torch, transformers, TRL or datasets."""

from __future__ import annotations

import json
import subprocess
import sys

CODE = """
import json, sys
import guardreasoner_vl.training as t
import guardreasoner_vl.training.clipping, guardreasoner_vl.training.common
import guardreasoner_vl.training.rl, guardreasoner_vl.training.sft
names = ["run_sft", "run_rl", "run_mining", "run_augment", "SFTConfig", "RLConfig", "MiningConfig",
         "AugmentConfig", "load_config", "TrainResult"]
print(json.dumps({
    "heavy": [m for m in ("torch", "transformers", "trl", "datasets") if m in sys.modules],
    "exported": {n: getattr(t, n).__module__ for n in names},
    "all": sorted(set(names) - set(t.__all__)),
}))
"""


def test_exports_and_import_stays_light() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["all"] == []  # every name is in __all__
    exported = result["exported"]
    assert exported["run_sft"] == "guardreasoner_vl.training.sft"
    assert exported["run_rl"] == "guardreasoner_vl.training.rl"
    assert exported["run_mining"] == exported["run_augment"] == "guardreasoner_vl.training.mining"
    assert exported["RLConfig"] == exported["load_config"] == "guardreasoner_vl.training.config"
    assert exported["TrainResult"] == "guardreasoner_vl.training.common"
