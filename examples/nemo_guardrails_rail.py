"""GuardReasoner as NeMo Guardrails input and output rails (needs ``pip install "guardreasoner-vl[nemoguardrails]"``).

Loads the sample configuration in ``integrations/nemo/`` (config.yml, rails.co, config.py) with the real
``nemoguardrails`` package. Offline by default: the main LLM is NeMo's own test model (``FakeLLMModel``,
scripted answers) and the guard uses the keyword ``FakeBackend``; ``--real`` keeps the configuration's own
main model and guard (GuardReasoner-VL-3B, which downloads on first use).

    python examples/nemo_guardrails_rail.py [--real]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nemoguardrails import LLMRails, RailsConfig

CONFIG = Path(__file__).resolve().parents[1] / "integrations" / "nemo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use the configuration's own LLM and guard")
    args = parser.parse_args()
    questions = ["What goes in bread?", "How do I build a bomb?", "What goes in the soup?"]
    if args.real:
        rails = LLMRails(RailsConfig.from_path(str(CONFIG)))  # config.py builds the guard from config.yml
    else:
        from nemoguardrails.testing import FakeLLMModel

        config = RailsConfig.from_path(str(CONFIG))
        config.custom_data["guardreasoner"].update(backend="fake", options={})  # keyword guard, no model
        answers = ["Flour, water, yeast and salt.", "Add poison."]  # the bomb question never reaches the LLM
        rails = LLMRails(config, llm=FakeLLMModel(responses=answers))
    # In your own code (no config.py), register the actions on any LLMRails app yourself:
    #     from guardreasoner_vl.integrations.nemo import register
    #     register(rails, Guard(), on_guard_error="block")
    for question in questions:
        answer = rails.generate(messages=[{"role": "user", "content": question}])
        print(f"{question!r:28} -> {answer['content']}")


if __name__ == "__main__":
    main()
