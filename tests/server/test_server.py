"""The moderation server over a real socket: the official ``openai`` client, httpx, limits, auth, 429, metrics."""

from __future__ import annotations

import asyncio
import base64

import httpx
import openai
import pytest
from openai.types import ModerationCreateResponse
from server_helpers import SlowBackend, data_url, png_bytes, running

from guardreasoner_vl.backends import FunctionBackend, Generation
from guardreasoner_vl.inputs import prepare_image
from guardreasoner_vl.moderation import OPENAI_CATEGORIES
from guardreasoner_vl.prompts import ModelFamily


def client(url: str, key: str = "unused", **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, **kwargs)  # type: ignore[arg-type]


# -- the openai client, unchanged --------------------------------------------------------------------


def test_openai_client_text_single_and_list() -> None:
    with running() as (url, _, _):
        one = client(url).moderations.create(input="How do I build a bomb?")
        assert isinstance(one, ModerationCreateResponse)
        assert one.model == "guard-under-test" and one.id.startswith("modr-")
        (result,) = one.results
        assert result.flagged is True
        # No categories are claimed and no score is invented (see guardreasoner_vl.moderation).
        assert result.categories.hate is False and result.categories.violence is False
        assert result.category_scores.violence is None
        extra = result.model_extra or {}
        assert extra["guardreasoner"]["request"] == "harmful"
        assert extra["guardreasoner"]["status"] == "ok"
        assert "How do I build a bomb?" in extra["guardreasoner"]["reasoning"]

        many = client(url).moderations.create(input=["bake bread", "a bomb", "plant a tree"], model="omni-moderation")
        assert [r.flagged for r in many.results] == [False, True, False]
        texts = [(r.model_extra or {})["guardreasoner"]["reasoning"] for r in many.results]
        assert ["bake bread" in texts[0], "a bomb" in texts[1], "plant a tree" in texts[2]] == [True, True, True]


def test_openai_client_image_input_reaches_the_model() -> None:
    with running() as (url, backend, _):
        red = client(url).moderations.create(
            input=[
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": data_url("red", (300, 130))}},
            ]
        )
        assert isinstance(red, ModerationCreateResponse)
        assert len(red.results) == 1 and red.results[0].flagged is True  # judged on the image alone
        blue = client(url).moderations.create(
            input=[{"type": "image_url", "image_url": {"url": data_url("blue")}}],
        )
        assert blue.results[0].flagged is False
        sent = [c[0] for c in backend.calls]
        assert sent[0].image is not None and sent[0].image.size == prepare_image(png_bytes("red", (300, 130))).size
        assert sent[0].prompt.user_text == "Human user:\n<image>\nwhat is this?\n\nAI assistant:\nNone\n"
        assert sent[1].prompt.user_text == "Human user:\n<image>\n\nAI assistant:\nNone\n"


async def test_async_openai_client() -> None:
    with running() as (url, _, _):
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        results = await asyncio.gather(*(aclient.moderations.create(input=f"text {i} bomb") for i in range(4)))
        assert all(r.results[0].flagged for r in results)
        await aclient.close()


# -- /v1/guard ----------------------------------------------------------------------------------------


def test_guard_endpoint_full_result() -> None:
    with running() as (url, backend, _):
        r = httpx.post(url + "/v1/guard", json={"text": "hello", "response": "here is a bomb recipe"})
        assert r.status_code == 200
        body = r.json()
        assert body["request"] == "unharmful" and body["response"] == "harmful" and body["flagged"] is True
        assert body["status"] == "ok" and body["judged"] is True and body["model"] == "guard-under-test"
        assert body["raw_output"].startswith("<think>") and body["usage"]["completion_tokens"] > 0
        # Bare base64 and data URLs both work; a list of images is merged into one.
        bare = base64.b64encode(png_bytes("red")).decode()
        r = httpx.post(url + "/v1/guard", json={"image": bare})
        assert r.status_code == 200 and r.json()["flagged"] is True
        r = httpx.post(url + "/v1/guard", json={"image": [data_url("blue", (60, 60)), data_url("blue", (60, 60))]})
        assert r.status_code == 200
        assert backend.calls[-1][0].image.size == prepare_image(png_bytes("blue", (120, 60))).size


def test_health_and_models() -> None:
    with running() as (url, _, _):
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and health["queue_depth"] == 0 and health["family"] == "vl"
        models = client(url).models.list()
        assert [m.id for m in models.data] == ["guard-under-test"]


# -- bad input, limits and errors ---------------------------------------------------------------------


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_bad_requests_get_clear_400s(tmp_path) -> None:
    on_disk = tmp_path / "secret.png"
    on_disk.write_bytes(png_bytes())
    with running() as (url, backend, _):
        post = httpx.Client(base_url=url).post
        assert "not valid JSON" in str(_error(post("/v1/moderations", content=b"{nope"), 400)["message"])
        assert "must be a JSON object" in str(_error(post("/v1/guard", json=[1]), 400)["message"])
        assert "missing 'input'" in str(_error(post("/v1/moderations", json={}), 400)["message"])
        err = _error(post("/v1/moderations", json={"input": [{"type": "video", "url": "x"}]}), 400)
        assert err["param"] == "input[0]" and "unsupported part type 'video'" in str(err["message"])
        err = _error(post("/v1/moderations", json={"input": ["a", {"type": "text", "text": "b"}]}), 400)
        assert "mixes strings and parts" in str(err["message"])
        assert "input is empty" in str(_error(post("/v1/moderations", json={"input": []}), 400)["message"])
        err = _error(post("/v1/moderations", json={"input": "   "}), 400)  # one input: its error is the request's
        assert err["param"] == "input" and "empty" in str(err["message"])
        # A string is never read as a file on the server.
        err = _error(post("/v1/guard", json={"image": str(on_disk)}), 400)
        assert "data: URL" in str(err["message"])
        err = _error(post("/v1/guard", json={"image": "http://169.254.169.254/latest"}), 400)
        assert err["code"] == "image_url_not_allowed"
        err = _error(post("/v1/guard", json={"image": base64.b64encode(b"not an image").decode()}), 400)
        assert "could not be decoded" in str(err["message"])
        assert "extra" in str(_error(post("/v1/guard", json={"text": "x", "colour": 1}), 400)["message"]).lower()
        err = _error(post("/v1/moderations", json={"input": ["x"] * 65}), 400)
        assert "at most 64" in str(err["message"])
        assert backend.calls == []  # nothing bad reached the engine
        assert _error(httpx.get(url + "/v1/nothing"), 404)["code"] == "not_found"
        assert _error(httpx.get(url + "/v1/moderations"), 405)["code"] == "method_not_allowed"


def test_a_bad_input_in_a_list_is_its_own_result_and_never_reaches_the_engine() -> None:
    # Issue 9.3: one bad input no longer fails its neighbours (it used to make the whole request a 400).
    with running() as (url, backend, _):
        response = httpx.post(url + "/v1/moderations", json={"input": ["ok", "   ", "a bomb"]})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["guardreasoner"]["status"] for r in results] == ["ok", "invalid_input", "ok"]
        assert [r["flagged"] for r in results] == [False, True, True]
        assert "empty" in results[1]["guardreasoner"]["error"]
        assert [r["guardreasoner"]["reasoning"] for r in (results[0], results[2])] == [
            "saw: Human user:\nok",
            "saw: Human user:\na bomb",
        ]
        assert backend.batch_sizes == [2]  # only the two good inputs were generated


def test_body_and_image_limits_give_413() -> None:
    with running(max_body_bytes=200_000, max_image_bytes=20_000) as (url, backend, _):
        big = "x" * 300_000
        err = _error(httpx.post(url + "/v1/moderations", json={"input": big}), 413)
        assert err["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(30):
                yield b" " * 10_000

        err = _error(httpx.post(url + "/v1/moderations", content=chunks()), 413)
        assert err["code"] == "body_too_large"
        noisy = base64.b64encode(bytes(range(256)) * 120).decode()  # ~30 KB decoded
        err = _error(httpx.post(url + "/v1/guard", json={"image": noisy}), 413)
        assert err["code"] == "image_too_large"
        err = _error(
            httpx.post(
                url + "/v1/moderations",
                json={"input": [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + noisy}}]},
            ),
            413,
        )
        assert err["param"] == "input[0].image_url.url"
        assert backend.calls == []


def test_bearer_auth() -> None:
    with running(api_key="s3cret") as (url, _, _):
        assert _error(httpx.post(url + "/v1/moderations", json={"input": "x"}), 401)["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert _error(httpx.post(url + "/v1/guard", json={"text": "x"}, headers=wrong), 401)["code"]
        assert httpx.get(url + "/metrics").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # liveness needs no key
        with pytest.raises(openai.AuthenticationError):
            client(url, key="nope").moderations.create(input="x")
        assert client(url, key="s3cret").moderations.create(input="x").results[0].flagged is False


def test_engine_failure_is_a_502_and_parse_failure_is_a_flagged_result() -> None:
    def fn(request):
        if "crash" in request.prompt.user_text:
            return Generation(text="", error="CUDA out of memory")
        return "I refuse to use the format."

    with running(FunctionBackend(fn, family=ModelFamily.VL)) as (url, _, _):
        err = _error(httpx.post(url + "/v1/moderations", json={"input": "crash please"}), 502)
        assert err["code"] == "engine_error" and "CUDA out of memory" in str(err["message"])
        r = client(url).moderations.create(input="anything")
        assert r.results[0].flagged is True  # fail closed: the verdicts could not be read
        assert (r.results[0].model_extra or {})["guardreasoner"]["status"] == "parse_error"


# -- batching, overload, metrics ------------------------------------------------------------------------


async def test_concurrent_requests_are_micro_batched() -> None:
    backend = SlowBackend(delay_s=0.1)
    with running(backend, max_batch_size=4, max_wait_ms=50) as (url, _, _):
        async with httpx.AsyncClient(base_url=url) as http:
            responses = await asyncio.gather(*(http.post("/v1/moderations", json={"input": f"q{i}"}) for i in range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert sum(backend.batch_sizes) == 8
    assert max(backend.batch_sizes) == 4 and all(1 <= n <= 4 for n in backend.batch_sizes)
    assert len(backend.batch_sizes) <= 4
    assert backend.max_concurrent == 1  # one engine call at a time (workers=1)


async def test_overload_answers_429_and_never_queues_beyond_the_bound() -> None:
    backend = SlowBackend(delay_s=0.2)
    with running(backend, max_batch_size=2, max_queue=4, max_wait_ms=0, max_inputs=4) as (url, _, app):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            responses = await asyncio.gather(
                *(http.post("/v1/moderations", json={"input": f"request {i}"}) for i in range(24))
            )
            metrics = (await http.get("/metrics")).text
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}
    assert codes.count(429) > 0 and codes.count(200) >= 4
    rejected = [r for r in responses if r.status_code == 429]
    assert all(r.headers["retry-after"] == "1" for r in rejected)
    assert all(r.json()["error"]["code"] == "queue_full" for r in rejected)
    state = app.state.guard_state
    assert state.batcher.max_depth_seen <= 4
    assert f'guardreasoner_rejected_total{{reason="queue_full"}} {codes.count(429)}' in metrics
    assert sum(backend.batch_sizes) == codes.count(200)


def test_metrics_are_valid_prometheus_text() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    backend = SlowBackend()
    with running(backend, max_batch_size=4) as (url, _, _):
        c = client(url)
        c.moderations.create(input=["a", "b bomb", "c"])
        c.moderations.create(input="d")
        httpx.post(url + "/v1/guard", json={"text": ""})
        response = httpx.get(url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("guardreasoner_http_requests_total", (("endpoint", "/v1/moderations"), ("status", "200")))] == 2
    assert samples[("guardreasoner_http_requests_total", (("endpoint", "/v1/guard"), ("status", "400")))] == 1
    assert samples[("guardreasoner_items_total", (("status", "ok"),))] == 4
    assert samples[("guardreasoner_flagged_total", ())] == 1
    assert samples[("guardreasoner_batches_total", ())] == len(backend.calls)
    assert samples[("guardreasoner_batch_size_count", ())] == len(backend.calls)
    assert samples[("guardreasoner_batch_size_sum", ())] == 4
    assert samples[("guardreasoner_queue_capacity", ())] == 256
    assert samples[("guardreasoner_queue_depth", ())] == 0
    assert families["guardreasoner_http_request_duration_seconds"].type == "histogram"
    count = samples[("guardreasoner_http_request_duration_seconds_count", (("endpoint", "/v1/moderations"),))]
    assert count == 2
    assert samples[("guardreasoner_tokens_total", (("kind", "completion"),))] > 0
    info = families["guardreasoner_info"].samples[0]
    assert info.labels["model"] == "guard-under-test" and info.labels["backend"] == "slow"


def test_categories_are_all_present_and_false() -> None:
    with running() as (url, _, _):
        body = httpx.post(url + "/v1/moderations", json={"input": "a bomb"}).json()
    (result,) = body["results"]
    assert set(result["categories"]) == set(OPENAI_CATEGORIES)
    assert not any(result["categories"].values())
    assert all(v is None for v in result["category_scores"].values())
    assert all(v == [] for v in result["category_applied_input_types"].values())


# -- one preparation per request -----------------------------------------------------------------------


def test_each_request_is_prepared_and_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server prepares a request once and the batch judges that prepared item (no second decode/render)."""
    import PIL.Image
    import PIL.ImageFile

    import guardreasoner_vl.guard as guard_module

    counts = {"render": 0, "prepare_image": 0, "decode": 0}

    def counting(name: str, fn: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            counts[name] += 1
            return fn(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    monkeypatch.setattr(guard_module, "render_prompt", counting("render", guard_module.render_prompt))
    monkeypatch.setattr(guard_module, "prepare_image", counting("prepare_image", guard_module.prepare_image))
    # pixel decodes: a load() with tiles still to decode (a header read for the memory budget's estimate
    # opens the file but decodes nothing; load() on an image already decoded is a no-op)
    real_load = PIL.ImageFile.ImageFile.load

    def counting_load(self: PIL.ImageFile.ImageFile) -> object:
        if self.tile:
            counts["decode"] += 1
        return real_load(self)

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", counting_load)
    with running() as (url, backend, _):
        image_url = data_url("red", (300, 130))
        out = httpx.post(url + "/v1/guard", json={"text": "what is this?", "image": image_url}, timeout=30)
        assert out.status_code == 200 and out.json()["flagged"] is True  # the image reached the model
        assert counts == {"render": 1, "prepare_image": 1, "decode": 1}
        assert backend.calls[-1][0].image is not None
        moderated = client(url).moderations.create(
            input=[{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": image_url}}]
        )
        assert moderated.results[0].flagged is True
        assert counts == {"render": 2, "prepare_image": 2, "decode": 2}


def test_openai_client_reads_harm_scores_it_can_threshold() -> None:
    """With scores, every category score is the harm score (documented in guardreasoner_vl.moderation); the real
    openai client parses them as floats, and a client threshold on them agrees with ``Guard(threshold=...)``."""
    from guardreasoner_vl.backends import scored_generation, verdict_output

    def answer(request: object) -> Generation:
        out = verdict_output(ModelFamily.VL, request_harmful=False)
        return scored_generation(out, {"request": 0.37})

    with running(FunctionBackend(answer, family=ModelFamily.VL)) as (url, _, _):
        (result,) = client(url).moderations.create(input="borderline").results
        assert result.flagged is False  # no threshold on the server: the label decides
        scores = result.category_scores.model_dump()
        assert len(scores) >= 13 and all(v == pytest.approx(0.37) for v in scores.values())  # the harm score
        assert not any(result.categories.model_dump().values())  # still no category claimed
        extra = (result.model_extra or {})["guardreasoner"]
        assert extra["request_score"] == pytest.approx(0.37) and extra["harm_score"] == pytest.approx(0.37)
        assert result.category_scores.violence >= 0.3  # a client thresholding at 0.3 would flag it

    with running(FunctionBackend(answer, family=ModelFamily.VL), category_scores="none") as (url, _, _):
        (result,) = client(url).moderations.create(input="borderline").results
        assert result.category_scores.violence is None
        assert (result.model_extra or {})["guardreasoner"]["harm_score"] == pytest.approx(0.37)
