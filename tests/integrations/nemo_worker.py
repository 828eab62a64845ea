"""Runs in the gateway venv (real ``nemoguardrails``): load a rails configuration folder with the real
``RailsConfig`` / ``LLMRails``, answer each scenario, print one JSON object per scenario.

The main LLM is NeMo's own ``nemoguardrails.testing.FakeLLMModel`` (there is no LLM here): it answers the
scenario's scripted reply, and counts its calls. The guard is whatever the folder's ``config.py`` builds
(the tests set ``backend: fake``, the keyword engine through the real prompt and parser); the prompts the
guard read are recorded by wrapping that engine's ``generate``.

    python nemo_worker.py CONFIG_DIR SCENARIOS.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.testing import FakeLLMModel

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend, FunctionBackend
from guardreasoner_vl.integrations.nemo import register

judged: list[str] = []
_generate = FakeBackend.generate


def _recording_generate(self: FakeBackend, requests: Any, params: Any) -> Any:
    judged.extend(r.prompt.user_text for r in requests)
    return _generate(self, requests, params)


FakeBackend.generate = _recording_generate  # type: ignore[method-assign]


def _broken(request: Any) -> str:
    raise RuntimeError("the guard's engine is down")


def run(config_dir: str, scenario: dict[str, Any]) -> dict[str, Any]:
    llm = FakeLLMModel(responses=[scenario.get("reply", "Knead the dough and bake it.")])
    rails = LLMRails(RailsConfig.from_path(config_dir), llm=llm)
    if scenario.get("broken_guard"):
        register(rails, Guard(backend=FunctionBackend(_broken)), on_guard_error=scenario["broken_guard"])
    judged.clear()
    try:
        answer = rails.generate(messages=scenario["messages"])
    except Exception as exc:  # reported to the test
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"answer": answer, "llm_calls": llm.inference_count, "judged": list(judged)}


def main() -> None:
    config_dir, path = sys.argv[1], sys.argv[2]
    with open(path) as handle:
        scenarios = json.load(handle)
    for scenario in scenarios:
        print(json.dumps(run(config_dir, scenario)), flush=True)


if __name__ == "__main__":
    main()
