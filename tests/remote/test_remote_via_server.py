"""The whole chain over real sockets: ``openai`` client -> our /v1/moderations server -> RemoteBackend
(async, inside the micro-batcher) -> an OpenAI-compatible chat server (the fake of remote_chat_server)."""

from __future__ import annotations

import asyncio
import base64
import io

import openai
from PIL import Image
from remote_chat_server import ChatServer

from guardreasoner_vl import Guard
from guardreasoner_vl.backends.remote import RemoteBackend
from guardreasoner_vl.server import ServerSettings, create_app, serve_in_thread


def test_openai_client_through_our_server_to_a_remote_engine(chat_server: ChatServer) -> None:
    chat_server.recorder.delay_s = 0.2
    backend = RemoteBackend("yueliu1999/GuardReasoner-VL-3B", base_url=chat_server.base_url, concurrency=4)
    app = create_app(Guard(backend=backend), settings=ServerSettings(max_batch_size=8, max_wait_ms=20))
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(buffer, format="PNG")
    image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    async def main(url: str) -> list[openai.types.ModerationCreateResponse]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        calls = [client.moderations.create(input=f"question {i}" + (" bomb" if i % 2 else "")) for i in range(6)]
        calls.append(
            client.moderations.create(
                input=[{"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": image_url}}]
            )
        )
        try:
            return list(await asyncio.gather(*calls))
        finally:
            await client.close()

    with serve_in_thread(app) as url:
        responses = asyncio.run(main(url))
    assert [r.results[0].flagged for r in responses[:6]] == [False, True, False, True, False, True]
    assert responses[6].results[0].flagged is False
    assert all(r.model == "yueliu1999/GuardReasoner-VL-3B" for r in responses)
    sent = chat_server.recorder.requests
    assert len(sent) == 7 and all(s["path"] == "/v1/chat/completions" for s in sent)
    # The server's micro-batch reached the remote engine as concurrent requests, within its bound.
    assert 2 <= chat_server.recorder.max_in_flight <= 4
    with_image = [s for s in sent if len(s["body"]["messages"][1]["content"]) == 3]
    assert len(with_image) == 1
    assert with_image[0]["body"]["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
