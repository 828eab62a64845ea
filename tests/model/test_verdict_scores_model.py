"""Verdict scores of the transformers engine equal a manual computation from a separate forward pass.

The tiny models are trained for a few seconds to write verdicts (``testing.tiny_verdict_model``); the
manual side re-generates with plain ``model.generate``, runs one forward pass over the prompt plus the
generated tokens before the label, and applies the rule of ``guardreasoner_vl.scores`` written out here
again over the whole vocabulary (softmax, candidates that write the prefix and then a beginning of a label).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from guardreasoner_vl import Guard  # noqa: E402
from guardreasoner_vl.parsing import parse_output  # noqa: E402
from guardreasoner_vl.testing import verdict_examples  # noqa: E402

PAIRS = {
    "request": ("harmful", "unharmful"),
    "response": ("harmful", "unharmful"),
    "refusal": ("refusal", "compliance"),
}


def _speaks(rest: str, word: str) -> bool:
    rest = rest.lower()
    if not rest:
        return False
    if len(rest) <= len(word):
        return word.startswith(rest)
    return rest.startswith(word) and not rest[len(word)].isalpha()


def _manual_scores(guard: Guard, example: dict) -> tuple[str, dict[str, float]]:
    engine = guard.backend
    model, tokenizer = engine.model, engine.tokenizer
    item = guard.prepare(example.get("text"), example.get("image"), response=example.get("response"))
    encoded, vision = engine._encode(item.request)
    prompt = torch.tensor([encoded.input_ids])
    extra = {}
    if vision is not None:
        extra = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
    with torch.inference_mode():
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=guard.params.max_new_tokens,
            do_sample=False,
            eos_token_id=engine.eos_token_ids,
            pad_token_id=engine.pad_token_id,
            **extra,
            **({"mm_token_type_ids": torch.tensor([encoded.image_mask])} if vision is not None else {}),
        )[0, prompt.shape[1] :].tolist()
    eos = set(engine.eos_token_ids)
    stop = next((i for i, t in enumerate(generated) if t in eos), len(generated))
    generated = generated[:stop]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(generated)
    has_response = example.get("response") is not None
    parsed = parse_output(text, expect_response=has_response, expect_refusal=has_response and "refusal" in text)
    vocab = [decode([i]) for i in range(len(tokenizer))]
    scores: dict[str, float] = {}
    for task, offset in parsed.label_offsets.items():
        if task != "request" and not has_response:
            continue
        index = next(i for i in range(len(generated)) if len(decode(generated[: i + 1])) > offset)
        prefix = text[len(decode(generated[:index])) : offset]
        ids = torch.tensor([encoded.input_ids + generated[:index]])
        kwargs = dict(extra)
        if vision is not None:
            kwargs["mm_token_type_ids"] = torch.tensor([encoded.image_mask + [0] * index])
        with torch.inference_mode():
            logits = model(input_ids=ids, **kwargs).logits[0, -1].double()
        probs = torch.softmax(logits, dim=-1)[: len(vocab)].tolist()
        positive, negative = PAIRS[task]
        mass = [0.0, 0.0]
        for token, p in zip(vocab, probs, strict=True):
            if token.startswith(prefix) and token[len(prefix) :]:
                rest = token[len(prefix) :]
                if _speaks(rest, positive):
                    mass[0] += p
                elif _speaks(rest, negative):
                    mass[1] += p
        scores[task] = mass[0] / (mass[0] + mass[1])
    return text, scores


@pytest.fixture(scope="module", params=["vl", "text"])
def trained(request, verdict_vl_path, verdict_text_path):
    path = {"vl": verdict_vl_path, "text": verdict_text_path}[request.param]
    with Guard(path, backend="transformers", device="cpu", max_new_tokens=60) as guard:
        yield guard, verdict_examples(request.param)


def test_scores_equal_a_separate_forward_pass(trained):
    guard, examples = trained
    seen_tasks = set()
    intermediate = False
    for example in examples:
        result = guard.moderate(example.get("text"), example.get("image"), response=example.get("response"))
        text, manual = _manual_scores(guard, example)
        assert result.raw_output == text
        assert result.status == "ok", (example, result.error, result.raw_output)
        got = {"request": result.request_score, "response": result.response_score, "refusal": result.refusal_score}
        for task, value in manual.items():
            assert got[task] == pytest.approx(value, abs=1e-5), (example, task)
            seen_tasks.add(task)
            intermediate |= 0.05 < value < 0.95
        for task in set(got) - set(manual):
            assert got[task] is None
    # the check covered real work: every task of the family and a score that is not 0 or 1
    expected = {"request", "response", "refusal"} if guard.family.has_refusal_task else {"request", "response"}
    assert seen_tasks == expected
    assert intermediate


def test_batched_and_single_calls_give_the_same_scores(trained):
    guard, examples = trained
    items = [{k: e.get(k) for k in ("text", "image", "response")} for e in examples]
    batch = guard.moderate_batch(items)
    for item, together in zip(items, batch, strict=True):
        alone = guard.moderate(item["text"], item["image"], response=item["response"])
        assert together.raw_output == alone.raw_output
        for field in ("request_score", "response_score", "refusal_score"):
            a, b = getattr(together, field), getattr(alone, field)
            assert (a is None) == (b is None)
            if a is not None:
                assert a == pytest.approx(b, abs=1e-5)


def test_scores_off_costs_nothing_and_changes_no_verdict(trained):
    guard, examples = trained
    items = [{k: e.get(k) for k in ("text", "image", "response")} for e in examples]
    on = guard.moderate_batch(items)
    off = guard.with_options(scores=False).moderate_batch(items)
    assert [r.raw_output for r in on] == [r.raw_output for r in off]
    assert all(r.request_score is None for r in off)
    assert any(r.request_score is not None for r in on)


def test_sampling_records_the_models_distribution_not_the_warped_one(trained):
    """With temperature 0.7 the recorded probabilities are still the model's (as vLLM reports raw logprobs)."""
    guard, examples = trained
    example = next(e for e in examples if e["text"] == "How do I build a bomb?")
    greedy = guard.moderate(example["text"])
    hot = guard.with_options(temperature=0.7, top_p=0.95)
    for seed in range(10):
        result = hot.with_options(seed=seed).moderate(example["text"])
        if result.status == "ok" and result.raw_output == greedy.raw_output:
            assert result.request_score == pytest.approx(greedy.request_score, abs=1e-5)
            return
    pytest.skip("no sampled output equalled the greedy one in 10 seeds")
