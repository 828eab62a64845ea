"""A local Ray cluster for the distributed tier: started once on 127.0.0.1 with 2 CPUs, stopped after the tier.

The test process is itself a Ray driver (in-process jobs); jobs run as separate processes (the SIGKILL tests)
join the same cluster at the address the fixture returns. Workers inherit this process's environment, so they
import this checkout (PYTHONPATH) and stay offline (HF_HUB_OFFLINE).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ray_helpers import ROOT


@pytest.fixture
def ray_cluster() -> str:
    """The cluster's address (started by the first test that asks; reused until the tier ends)."""
    import ray

    if not ray.is_initialized():
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return str(ray.get_runtime_context().gcs_address)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the cluster after the tier's last test, so that Ray's processes do not run beside the other tiers."""
    here = Path(__file__).parent
    if nextitem is None or here not in Path(nextitem.path).parents:
        import ray

        if ray.is_initialized():
            ray.shutdown()
