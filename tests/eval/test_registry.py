"""The registry of the paper's benchmark/task pairs."""

from __future__ import annotations

import pytest

from guardreasoner_vl.errors import InvalidInputError
from guardreasoner_vl.evaluation.registry import BENCHMARKS, find_benchmarks, get_benchmark, normalize_name


def test_the_paper_has_fourteen_pairs_with_sizes_and_modalities():
    paper = [b for b in BENCHMARKS if b.in_vl_paper]
    assert len(paper) == 14
    assert sum(b.task == "request" for b in paper) == 8
    assert sum(b.task == "response" for b in paper) == 6
    assert len({b.key for b in BENCHMARKS}) == len(BENCHMARKS)
    sizes = {b.key: b.size for b in paper}
    assert sizes["ToxicChat/request"] == 2853
    assert sizes["WildGuardTest/request"] == 1756 and sizes["WildGuardTest/response"] == 1768
    assert sizes["SPA-VL-Eval/request"] == sizes["SPA-VL-Eval/response"] == 3282
    assert get_benchmark("HarmImageTest").modality == "image"
    assert get_benchmark("SPA-VL-Eval", "request").modality == "text+image"
    assert {b.modality for b in paper if b.name not in ("HarmImageTest", "SPA-VL-Eval")} == {"text"}


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("XSTestReponseHarmful", "XSTestResponseHarmful/response"),  # the authors' spelling
        ("0_6_xstest_response_harmful.json", "XSTestResponseHarmful/response"),
        ("0_A_beaver_tails.json", "BeaverTails/response"),
        ("harmbench_prompt", "HarmBenchPrompt/request"),
        ("spa_vl_eval.json", None),  # two tasks
        ("XSTestResponseRefusal", "XSTestResponseRefusal/refusal"),
    ],
)
def test_names_match_loosely(name, key):
    found = find_benchmarks(name)
    if key is None:
        assert [b.task for b in found] == ["request", "response"]
        with pytest.raises(InvalidInputError, match="several tasks"):
            get_benchmark(name)
        assert get_benchmark(name, "response").key == "SPA-VL-Eval/response"
    else:
        assert get_benchmark(name).key == key


def test_unknown_names_are_refused_with_the_known_list():
    assert find_benchmarks("NotABenchmark") == []
    with pytest.raises(InvalidInputError, match=r"known: .*ToxicChat"):
        get_benchmark("NotABenchmark")
    with pytest.raises(InvalidInputError, match="unknown task"):
        get_benchmark("ToxicChat", "jailbreak")  # type: ignore[arg-type]


def test_label_block_benchmarks_and_positive_classes():
    assert {b.name for b in BENCHMARKS if b.label_block} == {"SafeRLHF", "BeaverTails", "WildGuardTest"}
    assert get_benchmark("XSTestResponseRefusal").positive == "refusal"
    assert get_benchmark("ToxicChat").positive == "harmful"
    assert normalize_name("0_2_OpenAIModeration.json") == "openaimoderation"
