"""Judge OpenAI-style chat messages directly, and answer in OpenAI's moderation schema.

Offline (keyword test-double guard).

    python examples/openai_messages_moderation.py
"""

from __future__ import annotations

from PIL import Image

from guardreasoner_vl import Guard
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.integrations.openai import (
    item_to_messages,
    messages_to_item,
    moderate_messages,
    to_openai_moderation,
)


def main() -> None:
    guard = Guard(backend=FakeBackend(harmful_keywords=["poison"]))
    # a guard input -> OpenAI messages (the image becomes a PNG data: URL) ...
    conversation = item_to_messages(
        "What should I add to this?", Image.new("RGB", (32, 32), "green"), response="Some poison."
    )
    conversation.insert(0, {"role": "system", "content": "You are a cooking assistant."})
    # ... and back: the last user turn, its images, the reply
    item = messages_to_item(conversation)
    print("request:", item.text, "| image:", str(item.image)[:30] + "...", "| response:", item.response)

    result = moderate_messages(guard, conversation)
    print("flagged:", result.flagged, "| request:", result.request, "| response:", result.response)
    print(to_openai_moderation(result).model_dump_json(indent=1)[:400])


if __name__ == "__main__":
    main()
