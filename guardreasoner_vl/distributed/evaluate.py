"""``guardreasoner-vl eval --ray``: the evaluation harness with its generation phase on a Ray actor pool.

Only where the predictions come from changes. The run folder is the one
:func:`guardreasoner_vl.evaluation.runner.evaluate` writes (``predictions/<Benchmark>/generated_predictions.jsonl``
in the authors' layout, one :class:`~guardreasoner_vl.jsonl_store.JsonlStore` per benchmark, the same rows),
so a run started in one process can be finished on Ray and the other way round. The driver appends each
judged batch as it comes back (one durable write), skips samples already predicted, refuses to resume a
folder written by another model, and scores locally with the same code as a one-process run.

Samples are judged the way the runner judges them: prepared once (the logged prompt is the one judged),
``batch_size`` samples of one benchmark per engine call; image files are read on the driver's machine and
travel with their sample.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from guardreasoner_vl.distributed.moderate import brief
from guardreasoner_vl.distributed.pool import EvalActor, PoolOptions, RayCluster, Source, run_blocks
from guardreasoner_vl.distributed.spec import GuardSpec
from guardreasoner_vl.errors import BackendError, GuardError, InvalidInputError
from guardreasoner_vl.evaluation.loaders import BenchmarkData, EvalSample, PredictionRecord, load_predictions
from guardreasoner_vl.evaluation.metrics import MODES, Mode
from guardreasoner_vl.evaluation.probabilities import ScoreOptions
from guardreasoner_vl.evaluation.reference import ReferenceScorer
from guardreasoner_vl.evaluation.report import EvalReport
from guardreasoner_vl.evaluation.runner import (
    _build_report,
    _check_modes,
    _row,
    check_model,
    predictions_path,
    resumed_predictions,
    run_meta,
)
from guardreasoner_vl.jsonl_store import JsonlStore
from guardreasoner_vl.prompts import ModelFamily, detect_family
from guardreasoner_vl.types import GuardResult

__all__ = ["evaluate_on_ray"]

logger = logging.getLogger(__name__)


class _Judged:
    """What the actors said about the guard they loaded (the rows and the report need it)."""

    def __init__(self, model_id: str, family: str, backend: str, max_new_tokens: int) -> None:
        self.model_id = model_id
        self.family = ModelFamily(family)
        self.backend = backend
        self.max_new_tokens = max_new_tokens


def _spec_family(spec: GuardSpec) -> ModelFamily | None:
    """The family the guard will have, as far as the driver can tell without loading it."""
    forced = spec.options.get("family")
    if forced is not None:
        return ModelFamily(forced)
    try:
        return detect_family(spec.model)
    except Exception:  # an id detect_family cannot place: the actors will tell
        return None


def _tables(
    pending: Sequence[tuple[int, EvalSample]], block_rows: int, first_block: int, first_index: int
) -> list[Any]:
    """Blocks of one benchmark's pending samples (a block never mixes benchmarks)."""
    import pyarrow as pa

    tables = []
    for offset in range(0, len(pending), block_rows):
        members = pending[offset : offset + block_rows]
        n = len(members)
        tables.append(
            pa.table(
                {
                    "block": pa.array([first_block + offset // block_rows] * n, pa.int64()),
                    "block_rows": pa.array([n] * n, pa.int64()),
                    "index": pa.array(range(first_index + offset, first_index + offset + n), pa.int64()),
                    "key": pa.array([f"{b}\t{s.id}" for b, s in members], pa.string()),
                    "payload": pa.array([pickle.dumps((s.id, s.item())) for _, s in members], pa.binary()),
                }
            )
        )
    return tables


def evaluate_on_ray(
    spec: GuardSpec,
    benchmarks: Sequence[BenchmarkData],
    output_dir: str | os.PathLike[str],
    *,
    limit: int | None = None,
    resume: bool = True,
    modes: Sequence[Mode] = MODES,
    reference_scorer: ReferenceScorer | Literal["auto"] = "auto",
    name: str | None = None,
    score_options: ScoreOptions | None = None,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    cpus_per_replica: float = 1.0,
    block_rows: int | None = None,
    address: str | None = None,
    init_options: dict[str, Any] | None = None,
    progress: bool | None = None,
    max_attempts: int = 3,
    on_rows: Callable[[str, int], None] | None = None,
) -> EvalReport:
    """:func:`~guardreasoner_vl.evaluation.runner.evaluate`, with the guard's generation on a Ray actor pool.

    Args:
        spec: the guard each actor loads.
        benchmarks, output_dir, limit, resume, modes, reference_scorer, name, score_options: as
            :func:`~guardreasoner_vl.evaluation.runner.evaluate` (``batch_size`` is the spec's).
        replicas, gpus_per_replica, cpus_per_replica, block_rows, address, init_options, progress,
            max_attempts: as :func:`~guardreasoner_vl.distributed.moderate_dataset`.
        on_rows: called as ``on_rows(benchmark, rows)`` after each saved batch.

    Returns:
        The :class:`~guardreasoner_vl.evaluation.report.EvalReport`.
    """
    modes = _check_modes(modes)
    if not benchmarks:
        raise InvalidInputError("give at least one benchmark")
    if limit is not None and limit < 1:
        raise InvalidInputError("limit must be at least 1")
    folders = [b.folder for b in benchmarks]
    if len(set(folders)) != len(folders):
        raise InvalidInputError(f"two benchmarks share a predictions folder: {sorted(folders)}")
    pool = PoolOptions(
        replicas=replicas,
        gpus_per_replica=gpus_per_replica,
        cpus_per_replica=cpus_per_replica,
        block_rows=block_rows or 4 * spec.batch_size,
    )
    family = _spec_family(spec)
    samples = [list(b.samples[:limit] if limit else b.samples) for b in benchmarks]
    for data, chosen in zip(benchmarks, samples, strict=True):
        if family is not None and not family.supports_images and any(s.images for s in chosen):
            raise InvalidInputError(
                f"{data.name} has image samples but {spec.model} is a text-only model; use a GuardReasoner-VL model"
            )
    paths = [predictions_path(Path(output_dir), b) for b in benchmarks]
    stores = [JsonlStore(p, fresh=not resume, owner="evaluation") for p in paths]
    judged: _Judged | None = None
    try:
        for store in stores:
            store.open()
        models: list[set[str]] = []
        pending: list[list[tuple[int, EvalSample]]] = []
        for b, (path, chosen) in enumerate(zip(paths, samples, strict=True)):
            done, found = resumed_predictions(path, chosen, None)
            if len(found) > 1:
                raise InvalidInputError(f"{path} holds predictions of several models ({sorted(found)}); start over")
            models.append(found)
            pending.append([(b, s) for s in chosen if s.id not in done])
            if on_rows is not None and done:
                on_rows(benchmarks[b].name, len(chosen) - len(pending[-1]))
        appended: set[str] = set()
        attempts = 0
        todo = [p for p in pending if p]
        if todo:
            source = Source(kind="items", path=None, image_base=None, limits=spec.limits)
            with RayCluster(address, init_options) as cluster:
                while todo:
                    attempts += 1
                    before = len(appended)
                    tables: list[Any] = []
                    first_index = 0
                    for members in todo:
                        tables.extend(_tables(members, pool.block_rows, len(tables), first_index))
                        first_index += len(members)
                    failure: Exception | None = None
                    try:
                        stream = run_blocks(
                            tables,
                            source=source,
                            actor=EvalActor,
                            spec=spec,
                            pool=pool,
                            cluster=cluster,
                            progress=progress,
                        )
                        judged = _save(stream, benchmarks, stores, paths, models, appended, judged, on_rows)
                    except (GuardError, KeyboardInterrupt):
                        raise
                    except Exception as exc:  # a Ray failure: what was saved stays saved
                        failure = exc
                    todo = [[(b, s) for b, s in members if f"{b}\t{s.id}" not in appended] for members in todo]
                    todo = [members for members in todo if members]
                    if not todo:
                        break
                    if attempts >= max_attempts or len(appended) == before:
                        left = sum(map(len, todo))
                        raise BackendError(
                            f"the Ray job stopped with {left} sample(s) not judged after {attempts} attempt(s) "
                            f"({brief(failure)}); what was judged is saved: run the same command again to judge "
                            "only the missing samples"
                        ) from failure
                    logger.warning("the Ray pipeline stopped (%s); starting it again for the rest", failure)
    finally:
        for store in stores:
            store.close()
    entries: list[tuple[Any, Sequence[PredictionRecord], str]] = []
    for data, path, chosen in zip(benchmarks, paths, samples, strict=True):
        by_id = {r.id: r for r in load_predictions(path)}
        records: list[PredictionRecord] = [by_id[s.id] for s in chosen if s.id in by_id]
        entries.extend((spec_, records, str(path)) for spec_ in data.specs)
    if judged is None:  # nothing was judged now: describe the run from its rows and the spec
        seen = sorted({str(r.extra.get("model")) for _, rs, _ in entries for r in rs if r.extra.get("model")})
        model = seen[0] if seen else spec.model
        family = family or ModelFamily.VL
        max_new = spec.options.get("max_new_tokens") or family.default_max_new_tokens
        judged = _Judged(model, family.value, spec.backend, int(max_new))
    meta, notes = run_meta(
        benchmarks,
        model=judged.model_id,
        family=judged.family,
        backend=judged.backend,
        limit=limit,
        max_new_tokens=judged.max_new_tokens,
    )
    meta["ray"] = {"replicas": pool.replicas, "gpus_per_replica": pool.gpus_per_replica, "block_rows": pool.block_rows}
    return _build_report(
        entries,
        name=name or judged.model_id,
        modes=modes,
        reference_scorer=reference_scorer,
        meta=meta,
        notes=notes,
        thresholds=score_options,
    )


def _save(
    stream: Iterator[Any],
    benchmarks: Sequence[BenchmarkData],
    stores: Sequence[JsonlStore],
    paths: Sequence[Path],
    models: Sequence[set[str]],
    appended: set[str],
    judged: _Judged | None,
    on_rows: Callable[[str, int], None] | None,
) -> _Judged | None:
    """Append each judged sample to its benchmark's predictions, once; check the model on the way."""
    by_id = [{s.id: s for s in b.samples} for b in benchmarks]
    for table in stream:
        columns = table.to_pydict()
        rows: dict[int, list[dict[str, Any]]] = {}
        for i in range(table.num_rows):
            key = columns["key"][i]
            if key in appended:
                continue  # delivered again (a retried task)
            b_text, _, sample_id = key.partition("\t")
            b = int(b_text)
            if judged is None:
                judged = _Judged(
                    columns["model"][i], columns["family"][i], columns["backend"][i], columns["max_new_tokens"][i]
                )
                if not judged.family.supports_images and any(s.images for data in benchmarks for s in data.samples):
                    raise InvalidInputError(
                        f"{benchmarks[b].name} has image samples but {judged.model_id} is a text-only model; use a "
                        "GuardReasoner-VL model"
                    )
            for found in models[b]:
                check_model(paths[b], found, judged.model_id)
            result = GuardResult.model_validate_json(columns["result"][i])
            sample = by_id[b][sample_id]
            rows.setdefault(b, []).append(_row(judged, benchmarks[b], sample, result, columns["prompt"][i]))
            appended.add(key)
        for b, batch in rows.items():
            stores[b].append(batch)
            if on_rows is not None:
                on_rows(benchmarks[b].name, len(batch))
    return judged
