"""Shared fixtures: one local Ray instance per test session, tiny models in a session cache."""

from __future__ import annotations

import os
import tempfile

import pytest

# Tiny pipelines are built once per session into this cache; Ray workers inherit it.
os.environ.setdefault("DARKROOM_CACHE", tempfile.mkdtemp(prefix="darkroom-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray instance of the test session (4 logical CPUs on 2 cores, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"DARKROOM_CACHE": os.environ["DARKROOM_CACHE"]}})
    yield ray
    ray.shutdown()
