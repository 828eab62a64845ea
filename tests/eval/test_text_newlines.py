"""How the user turn of a text benchmark ends, checked on the real benchmark files and the 1B predictions.

The authors' text script builds ``instruction + "\\n" + input`` and their VL script sends ``input`` itself as the
user turn, so the turn the model sees ends exactly as the file's ``input`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from guardreasoner_vl.evaluation.loaders import load_text_benchmark
from guardreasoner_vl.prompts import TEXT_INSTRUCTION, ModelFamily, render_prompt, vl_user_text


def test_text_user_turns_end_in_two_newlines_after_the_response(text_data: Path):
    own_newline = 0
    for path in sorted((text_data / "benchmark").glob("*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))
        samples = load_text_benchmark(path)
        for record, sample in zip(records, samples, strict=True):
            user = record["input"]
            response = "None" if sample.response is None else sample.response
            # the layout's own ending is exactly two newlines; more are the response's own and are kept
            assert user.endswith("\nAI assistant:\n" + response + "\n\n")
            own_newline += response.endswith("\n")
            assert record["instruction"] == TEXT_INSTRUCTION
            rendered = render_prompt(ModelFamily.TEXT, sample.text, response=sample.response).text
            assert rendered == record["instruction"] + "\n" + user  # the text family matches byte for byte
    assert own_newline == 72 + 72 + 1  # XSTest harmful and refusal: 72 each; one SafeRLHF response


def test_the_vl_rendering_of_a_text_benchmark_lacks_one_trailing_newline(text_data: Path):
    """A VL guard renders ``...\\n{response}\\n``; the authors' VL script sent the file's ``...\\n{response}\\n\\n``.

    This pins the one-newline difference that the evaluation report notes for a VL guard on text benchmarks
    (the prompt builder is outside the evaluation package).
    """
    for path in sorted((text_data / "benchmark").glob("*.json"))[:3]:
        for record, sample in zip(json.loads(path.read_text(encoding="utf-8")), load_text_benchmark(path), strict=True):
            assert vl_user_text(sample.text, sample.response, has_image=False) + "\n" == record["input"]
