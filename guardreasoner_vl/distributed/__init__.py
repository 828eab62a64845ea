"""Scale beyond one process: dataset-scale moderation and evaluation on a Ray cluster.

Needs the ``[ray]`` extra (``pip install "guardreasoner-vl[ray]"``); importing this package does not import Ray.

* :func:`moderate_dataset` (``guardreasoner-vl moderate-file IN OUT --ray``): JSONL or Parquet in, the rows of
  ``moderate-file`` out, judged by a pool of actors that each load one guard once; exactly once and
  resumable (see :mod:`guardreasoner_vl.distributed.moderate`).
* :func:`evaluate_on_ray` (``guardreasoner-vl eval --ray``): the evaluation harness with its generation phase
  on the same actor pool, writing the same resumable run folders; scoring stays local.
* :class:`GuardSpec`: the guard every actor loads (a model and :class:`~guardreasoner_vl.Guard` options).

The remote engine's own scaling (several ``vllm serve`` replicas behind one guard) needs no Ray: give it a
list of base URLs (see :mod:`guardreasoner_vl.backends.endpoints`). ``docs/scale.md`` says how to size each.
"""

from __future__ import annotations

from guardreasoner_vl.distributed.evaluate import evaluate_on_ray
from guardreasoner_vl.distributed.moderate import DistributedSummary, moderate_dataset
from guardreasoner_vl.distributed.pool import PoolOptions, RayCluster
from guardreasoner_vl.distributed.spec import GuardSpec

__all__ = ["DistributedSummary", "GuardSpec", "PoolOptions", "RayCluster", "evaluate_on_ray", "moderate_dataset"]
