"""The declared engine contract and the registry: third-party engines by registration alone."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import guardreasoner_vl.backends as backends
from guardreasoner_vl import Guard, InvalidInputError, ModelFamily, Verdict
from guardreasoner_vl.backends import (
    Backend,
    EngineSettings,
    FakeBackend,
    Generation,
    GenerationRequest,
    SamplingParams,
    as_backend,
    backend_names,
    create_backend,
    register_backend,
    verdict_output,
)


class EchoEngine(Backend):
    """A third-party engine: harmful when the user text says "knife"; records what it was built with."""

    name = "echo"

    def __init__(self, model: str | Path, *, family: ModelFamily | None = None, flavour: str = "plain") -> None:
        self.model_id = f"echo:{model}"
        self.family = family
        self.flavour = flavour
        self.settings: EngineSettings | None = None
        self.closed = 0

    @classmethod
    def from_settings(cls, model: str | Path, settings: EngineSettings) -> EchoEngine:
        engine = cls(model, **settings.merged(family=settings.family))
        engine.settings = settings
        return engine

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Generation]:
        return [
            Generation(verdict_output(r.prompt.family, request_harmful="knife" in r.prompt.user_text)) for r in requests
        ]

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def _clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_registered", {})


def test_a_new_engine_by_registration_alone():
    register_backend("echo", EchoEngine)
    assert "echo" in backend_names()
    model = "someone/GuardReasoner-VL-tuned"
    with Guard(model, backend="echo", batch_size=3, backend_options={"flavour": "spicy"}) as guard:
        engine = guard.backend
        assert isinstance(engine, EchoEngine) and engine.flavour == "spicy"
        assert guard.model_id == f"echo:{model}" and guard.family is ModelFamily.VL  # detected from the id
        assert engine.settings is not None and engine.settings.batch_size == 3
        assert engine.settings.max_pixels == guard.limits.max_pixels  # the guard's image bounds reach it
        results = guard.moderate_batch(["a knife", "bread"])
        assert [r.request for r in results] == [Verdict.HARMFUL, Verdict.UNHARMFUL]
    assert engine.closed == 1


def test_factories_and_module_strings_register_too():
    made: list[EngineSettings] = []

    def factory(model: str | Path, settings: EngineSettings) -> FakeBackend:
        made.append(settings)
        return FakeBackend(family=settings.family)

    register_backend("by-factory", factory)
    register_backend("by-string", "guardreasoner_vl.backends.fake:FakeBackend")
    guard = Guard("x/y", backend="by-factory", family="text")
    assert guard.family is ModelFamily.TEXT and made[0].family is ModelFamily.TEXT
    assert guard.moderate("how to poison", response="sorry, I can't").refusal is not None
    assert Guard(backend="by-string").moderate("a bomb").flagged


def test_registration_errors_and_unknown_names_list_the_choices():
    register_backend("echo", EchoEngine)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_backend("echo", EchoEngine)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_backend("transformers", EchoEngine)
    register_backend("echo", FakeBackend, replace=True)
    with pytest.raises(InvalidInputError, match="auto"):
        register_backend("auto", EchoEngine)
    with pytest.raises(InvalidInputError, match=r"unknown backend 'nope'; choose one of: .*echo.*fake.*remote"):
        Guard(backend="nope")
    register_backend("broken", lambda model, settings: object())
    with pytest.raises(InvalidInputError, match="generate"):
        create_backend("broken", "m")


def test_entry_point_group_adds_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A package that declares ``[project.entry-points."guardreasoner_vl.backends"]`` is found by name."""
    pkg = tmp_path / "grvl_plugin_demo.py"
    pkg.write_text(
        "from guardreasoner_vl.backends import FakeBackend\n\nclass PluginEngine(FakeBackend):\n    name = 'plugin'\n"
    )
    dist = tmp_path / "grvl_plugin_demo-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grvl-plugin-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[guardreasoner_vl.backends]\nplugin = grvl_plugin_demo:PluginEngine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin" in backend_names()
    guard = Guard(backend="plugin")
    assert guard.backend.name == "plugin" and guard.moderate("a bomb").flagged
    sys.modules.pop("grvl_plugin_demo", None)


def test_engine_family_conflict_is_an_error():
    register_backend("echo", EchoEngine)
    with pytest.raises(InvalidInputError, match=r"family='vl'.*'text' family"):
        Guard("m", backend=FakeBackend(family=ModelFamily.TEXT), family="vl")
    with pytest.raises(InvalidInputError, match=r"family='text'.*'vl' family"):
        Guard("m", backend="echo", family="text", backend_options={"family": ModelFamily.VL})
    # an engine that serves any family takes the guard's
    assert Guard("m", backend=FakeBackend(), family="text").family is ModelFamily.TEXT
    assert Guard(backend=FakeBackend(family=ModelFamily.TEXT)).family is ModelFamily.TEXT


def test_declared_defaults_async_check_and_close():
    class Minimal(Backend):
        name = "minimal"

        def generate(self, requests, params):
            return [Generation(verdict_output(ModelFamily.VL, request_harmful=False)) for _ in requests]

    engine = Minimal()
    assert engine.family is None and engine.model_id is None
    assert engine.check_prompt(None) is None and engine.close() is None  # type: ignore[arg-type]
    guard = Guard(backend=engine)
    assert asyncio.run(guard.amoderate("hello")).request is Verdict.UNHARMFUL  # agenerate via a worker thread
    asyncio.run(engine.aclose())
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]


def test_duck_typed_engines_keep_working():
    class Duck:
        name = "duck"

        def __init__(self) -> None:
            self.calls = 0
            self.closed = False

        def generate(self, requests, params):
            self.calls += 1
            return [Generation(verdict_output(ModelFamily.VL, request_harmful=True)) for _ in requests]

        def close(self) -> None:
            self.closed = True

    duck = Duck()
    with Guard(backend=duck) as guard:
        assert isinstance(guard.backend, Backend) and guard.backend.name == "duck"
        assert guard.moderate("x").flagged and asyncio.run(guard.amoderate("y")).flagged
        assert guard.backend.calls == 2  # other attributes read through
        assert guard.model_id == "duck"
    assert duck.closed
    assert as_backend(guard.backend) is guard.backend
    with pytest.raises(InvalidInputError, match="generate"):
        as_backend(object())
