"""The one conversation rule (guardreasoner_vl.conversation), and that every integration uses it."""

from __future__ import annotations

import pytest
from integration_helpers import png_data_url
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from guardreasoner_vl import InvalidInputError
from guardreasoner_vl.conversation import Message, conversation_to_item
from guardreasoner_vl.integrations import langchain as lc
from guardreasoner_vl.integrations import openai as oai


def test_single_turn_is_the_request_alone() -> None:
    item = conversation_to_item([Message("system"), Message("user", "hi"), Message("assistant", "hello")])
    assert (item.text, item.image, item.response) == ("hi", None, "hello")


def test_history_steps_and_images_have_one_deterministic_layout() -> None:
    red, blue = png_data_url("red"), png_data_url("blue")
    messages = [
        Message("system"),
        Message("user", "first", (red,)),
        Message("assistant", "answer one"),
        Message("user", "second"),
        Message("user", "part two", (blue,)),
        Message("assistant", None, tool_calls=('[tool call] search({"q": "x"})',)),
        Message("tool", "result text", name="search"),
        Message("assistant", "final"),
    ]
    item = conversation_to_item(messages)
    assert item.text == (
        "[Earlier conversation]\n"
        "User: [image] first\n"
        "Assistant: answer one\n"
        "[Current request, with image]\n"
        "second\npart two\n"
        "[Steps in this turn]\n"
        'Assistant: [tool call] search({"q": "x"})\n'
        "Tool result (search): result text"
    )
    assert item.image == [red, blue] and item.response == "final"
    assert conversation_to_item(messages) == item  # deterministic
    # an explicit response makes the trailing assistant message a step of the turn
    given = conversation_to_item(messages, response="other")
    assert given.response == "other" and given.text is not None and given.text.endswith("Assistant: final")


def test_trailing_tool_result_is_a_step_not_the_response() -> None:
    item = conversation_to_item([Message("user", "q"), Message("tool", "out")])
    assert item.response is None and item.text == "[Current request]\nq\n[Steps in this turn]\nTool result: out"


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([Message("assistant", "x")], "no user message"),
        ([Message("user", "  ")], "neither text nor images"),
        ([Message("user", "q"), Message("assistant", "a", (png_data_url(),))], "text responses"),
    ],
)
def test_refused_conversations(messages: list[Message], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        conversation_to_item(messages)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="role"):
        Message("narrator", "x")  # type: ignore[arg-type]


def test_langchain_and_openai_readers_give_the_same_item() -> None:
    lc_messages = [
        SystemMessage("Be nice."),
        HumanMessage("first"),
        AIMessage("", tool_calls=[{"name": "search", "args": {"q": "x"}, "id": "c1"}]),
        ToolMessage("found it", tool_call_id="c1", name="search"),
        AIMessage("Here."),
        HumanMessage(
            content=[{"type": "text", "text": "now"}, {"type": "image_url", "image_url": {"url": png_data_url()}}]
        ),
        AIMessage("Done."),
    ]
    oai_messages = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "search", "content": "found it"},
        {"role": "assistant", "content": "Here."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "now"}, {"type": "image_url", "image_url": {"url": png_data_url()}}],
        },
        {"role": "assistant", "content": "Done."},
    ]
    from_lc = conversation_to_item(lc.to_conversation(lc_messages))
    from_oai = oai.messages_to_item(oai_messages)
    assert from_lc == from_oai
    assert from_lc.text is not None and 'Assistant: [tool call] search({"q": "x"})' in from_lc.text


def test_responses_items_and_nemo_events_give_the_same_item_as_chat_messages() -> None:
    from guardreasoner_vl.integrations._common import responses_input_messages
    from guardreasoner_vl.integrations.nemo import events_to_messages

    image = png_data_url()
    chat = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "search", "content": "found it"},
        {"role": "assistant", "content": "Here."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "now"}, {"type": "image_url", "image_url": {"url": image}}],
        },
    ]
    items = [
        {"role": "user", "content": "first"},
        {"type": "function_call", "call_id": "c1", "name": "search", "arguments": '{"q": "x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "found it"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Here."}]},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "now"}, {"type": "input_image", "image_url": image}],
        },
    ]
    events = [
        {"type": "SystemMessage", "content": "Be nice."},
        {"type": "UtteranceUserActionFinished", "final_transcript": "first"},
        {"type": "BotToolCalls", "tool_calls": chat[2]["tool_calls"]},
        {"type": "UserToolMessages", "tool_messages": [{"content": "found it", "name": "search"}]},
        {"type": "UtteranceBotActionFinished", "final_script": "Here."},
        {"type": "UtteranceUserActionFinished", "final_transcript": chat[5]["content"]},
    ]
    expected = oai.messages_to_item(chat, response="Done.")
    assert conversation_to_item(responses_input_messages(items, "Be nice."), response="Done.") == expected
    assert conversation_to_item(events_to_messages(events), response="Done.") == expected
    assert expected.text is not None and "Tool result (search): found it" in expected.text
