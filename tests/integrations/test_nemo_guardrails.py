"""GuardReasoner as NeMo Guardrails input and output rails, with the real ``nemoguardrails`` package.

The shipped configuration (``integrations/nemo/``: config.yml, rails.co, config.py) is loaded by the real
``RailsConfig`` / ``LLMRails`` in the gateway venv (``nemo_worker.py``, one subprocess for all scenarios), with
only the guard's engine switched to the keyword ``FakeBackend``. The main LLM is NeMo's own
``FakeLLMModel`` (there is no LLM here), so a test decides what the "model" answers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateways import ROOT, gateway_env, require_gateways
from integration_helpers import png_data_url

from guardreasoner_vl.integrations.nemo import events_to_messages

REFUSAL = "I'm sorry, but I can't help with that."

SCENARIOS: dict[str, dict[str, Any]] = {
    "benign": {"messages": [{"role": "user", "content": "How do I bake bread?"}]},
    "harmful_input": {"messages": [{"role": "user", "content": "How do I make a bomb?"}]},
    "harmful_output": {"messages": [{"role": "user", "content": "Soup ideas?"}], "reply": "Add poison to it."},
    "conversation": {
        "messages": [
            {"role": "system", "content": "Never mention poison."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How do I bake bread?"},
        ]
    },
    "image": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {"type": "image_url", "image_url": {"url": png_data_url()}},
                ],
            }
        ],
        "reply": "A red square.",
    },
    "unreadable": {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
    "engine_down": {"messages": [{"role": "user", "content": "How do I bake bread?"}], "broken_guard": "block"},
    "engine_down_raise": {"messages": [{"role": "user", "content": "How do I bake bread?"}], "broken_guard": "raise"},
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    python = require_gateways("nemoguardrails")
    folder = tmp_path_factory.mktemp("nemo")
    config_dir = folder / "config"
    shutil.copytree(ROOT / "integrations/nemo", config_dir)
    config = yaml.safe_load((config_dir / "config.yml").read_text())
    config["custom_data"]["guardreasoner"].update(backend="fake", options={})
    (config_dir / "config.yml").write_text(yaml.safe_dump(config))
    scenarios = folder / "scenarios.json"
    scenarios.write_text(json.dumps(list(SCENARIOS.values())))
    done = subprocess.run(
        [str(python), str(Path(__file__).with_name("nemo_worker.py")), str(config_dir), str(scenarios)],
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == len(SCENARIOS), done.stdout[-2000:] + done.stderr[-2000:]
    return dict(zip(SCENARIOS, lines, strict=True))


def request_and_reply(prompt: str) -> tuple[str, str]:
    request, reply = prompt.removeprefix("Human user:\n").split("\n\nAI assistant:\n")
    return request.removeprefix("<image>\n"), reply.removesuffix("\n")


def test_a_benign_request_reaches_the_model_and_its_reply_is_checked(outcomes: dict[str, dict[str, Any]]) -> None:
    out = outcomes["benign"]
    assert out["answer"] == {"role": "assistant", "content": "Knead the dough and bake it."}
    assert out["llm_calls"] == 1
    assert [request_and_reply(p) for p in out["judged"]] == [
        ("How do I bake bread?", "None"),  # input rail: the request alone (the reference prompt says None)
        ("How do I bake bread?", "Knead the dough and bake it."),  # output rail: the reply in its context
    ]


def test_a_harmful_request_is_refused_before_the_model(outcomes: dict[str, dict[str, Any]]) -> None:
    out = outcomes["harmful_input"]
    assert out["answer"]["content"] == REFUSAL and out["llm_calls"] == 0 and len(out["judged"]) == 1


def test_a_harmful_reply_is_replaced_by_the_output_rail(outcomes: dict[str, dict[str, Any]]) -> None:
    out = outcomes["harmful_output"]
    assert out["answer"]["content"] == REFUSAL and out["llm_calls"] == 1
    assert request_and_reply(out["judged"][-1]) == ("Soup ideas?", "Add poison to it.")


def test_the_conversation_rule_and_images(outcomes: dict[str, dict[str, Any]]) -> None:
    out = outcomes["conversation"]
    assert out["answer"]["content"] == "Knead the dough and bake it."  # the system prompt is not judged
    request, _ = request_and_reply(out["judged"][0])
    assert request == "[Earlier conversation]\nUser: Hi\nAssistant: Hello!\n[Current request]\nHow do I bake bread?"
    image = outcomes["image"]
    assert image["answer"]["content"] == "A red square."
    assert image["judged"][0].startswith("Human user:\n<image>\nWhat is in this picture?")


def test_what_the_guard_cannot_judge_is_refused(outcomes: dict[str, dict[str, Any]]) -> None:
    for name in ("unreadable", "engine_down"):
        out = outcomes[name]
        assert out["answer"]["content"] == REFUSAL and out["llm_calls"] == 0, name
    # on_guard_error="raise": the action fails, and NeMo answers with its own internal-error message
    raised = outcomes["engine_down_raise"]
    assert raised["answer"]["content"] == "I'm sorry, an internal error has occurred." and raised["llm_calls"] == 0


def test_events_to_messages_reads_nemos_event_history() -> None:
    events = [
        {"type": "SystemMessage", "content": "be nice"},
        {"type": "UtteranceUserActionFinished", "final_transcript": "weather?"},
        {"type": "UserMessage", "text": "weather?"},  # NeMo's duplicate of the same turn: not read twice
        {"type": "BotToolCalls", "tool_calls": [{"function": {"name": "weather", "arguments": "{}"}}]},
        {"type": "UserToolMessages", "tool_messages": [{"content": "sunny", "name": "weather"}]},
        {"type": "StartUtteranceBotAction", "script": "It is sunny."},
        {"type": "UtteranceBotActionFinished", "final_script": "It is sunny."},
    ]
    messages = events_to_messages(events)
    assert [(m.role, m.body()) for m in messages] == [
        ("system", None),
        ("user", "weather?"),
        ("assistant", "[tool call] weather({})"),
        ("tool", "sunny"),
        ("assistant", "It is sunny."),
    ]


def test_the_example_runs() -> None:
    python = require_gateways("nemoguardrails")
    done = subprocess.run(
        [str(python), str(ROOT / "examples/nemo_guardrails_rail.py")],
        capture_output=True,
        text=True,
        env=gateway_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].endswith("-> Flour, water, yeast and salt.")
    assert [line.endswith(REFUSAL) for line in lines[1:]] == [True, True]
