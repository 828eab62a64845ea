"""A local Ray cluster for the distributed tier: started once by the test session on 127.0.0.1, 2 CPUs.

The test process is itself a Ray driver (in-process jobs); jobs run as separate processes (the SIGKILL tests)
join the same cluster at the address the fixture yields. Workers inherit this process's environment, so they
import this checkout (PYTHONPATH) and stay offline (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from ray_helpers import ROOT


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
