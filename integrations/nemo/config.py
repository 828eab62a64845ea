"""NeMo Guardrails runs ``init(app)`` from a configuration folder's ``config.py`` when it loads the folder:
this one builds the guard from ``custom_data.guardreasoner`` in ``config.yml`` and registers the
``guardreasoner_check_input`` / ``guardreasoner_check_output`` actions that ``rails.co`` executes."""

from typing import Any

from guardreasoner_vl import Guard
from guardreasoner_vl.integrations.nemo import register


def init(app: Any) -> None:
    settings = dict((app.config.custom_data or {}).get("guardreasoner") or {})
    model = settings.get("model") or "yueliu1999/GuardReasoner-VL-3B"
    guard = Guard(model, backend=settings.get("backend", "auto"), **dict(settings.get("options") or {}))
    register(
        app,
        guard,
        on_guard_error=settings.get("on_guard_error", "block"),
        guard_timeout_s=settings.get("guard_timeout_s"),
    )
