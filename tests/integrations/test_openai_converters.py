"""Converters between OpenAI chat messages and guard inputs, and the moderation schema re-export."""

from __future__ import annotations

import pytest
from integration_helpers import AsyncFakeBackend, png_data_url
from openai.types.chat import ChatCompletionMessage
from PIL import Image

from guardreasoner_vl import Guard, InvalidInputError
from guardreasoner_vl import moderation as core_moderation
from guardreasoner_vl.integrations import openai as oai


def test_last_user_turn_and_reply() -> None:
    messages = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "second"},
                {"type": "image_url", "image_url": {"url": png_data_url(), "detail": "low"}},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "question"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "second answer"}]},
    ]
    item = oai.messages_to_item(messages)
    # consecutive user messages are one turn; the earlier turn is context inside the prompt (issue 13.1)
    assert item.text == (
        "[Earlier conversation]\nUser: first question\nAssistant: first answer\n"
        "[Current request, with image]\nsecond\nquestion"
    )
    assert item.image == png_data_url()
    assert item.response == "second answer"
    assert oai.messages_to_item(messages[:4]).response is None  # the earlier answer is not the reply
    assert oai.messages_to_item(messages, response="override").response == "override"


def test_several_images_become_a_list_and_object_messages_work() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": png_data_url("red")}},
                {"type": "input_image", "image_url": png_data_url("blue")},
            ],
        },
        ChatCompletionMessage(
            role="assistant",
            content=None,
            refusal="I can't do that.",
            tool_calls=[{"id": "c", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
        ),
    ]
    item = oai.messages_to_item(messages)
    assert item.text is None and item.image == [png_data_url("red"), png_data_url("blue")]
    assert item.response == 'I can\'t do that.\n[tool call] search({"q": "x"})'


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "system", "content": "x"}], "no user message"),
        ([{"role": "user", "content": "  "}], "neither text nor images"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}],
            "input_audio",
        ),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hosts"}}]}], "local paths"),
        ([{"content": "no role"}], "no 'role'"),
        ("just a string", "list of chat messages"),
    ],
)
def test_bad_conversations(messages: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        oai.messages_to_item(messages)  # type: ignore[arg-type]


def test_item_to_messages_round_trip(guard: Guard) -> None:
    image = Image.new("RGB", (56, 56), (0, 128, 255))
    messages = oai.item_to_messages("What colour?", image, response="Blue-ish.")
    assert messages[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    item = oai.messages_to_item(messages)
    assert item.text == "What colour?" and item.response == "Blue-ish."
    prepared = guard.prepare(item.text, item.image, response=item.response)
    assert prepared.request.image is not None
    assert prepared.request.image.getpixel((5, 5)) == (0, 128, 255)  # PNG is lossless
    assert oai.item_to_messages("hi") == [{"role": "user", "content": "hi"}]
    with pytest.raises(InvalidInputError):
        oai.item_to_messages()


async def test_moderate_messages(guard: Guard, backend: AsyncFakeBackend) -> None:
    conversation = [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": "Add poison."},
    ]
    result = oai.moderate_messages(guard, conversation)
    assert result.request is not None and result.request.value == "unharmful"
    assert result.response is not None and result.response.value == "harmful"
    async_result = await oai.amoderate_messages(guard, conversation)
    assert async_result.model_dump(exclude={"usage"}) == result.model_dump(exclude={"usage"})
    assert backend.async_calls == 1


def test_moderation_schema_is_shared() -> None:
    assert oai.to_openai_moderation is core_moderation.to_openai_moderation
    guard = Guard(backend="fake")
    response = oai.to_openai_moderation(oai.moderate_messages(guard, [{"role": "user", "content": "poison"}]))
    assert response.results[0].flagged and response.results[0].guardreasoner.request is not None
