"""Dask scheduler fixtures: threads, a process pool and one real LocalCluster per test run.

Loaded as a plugin (``pytest_plugins = ["tests.dask_fixtures"]``, never imported
directly) so that the session-scoped cluster is shared by every module that uses it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import dask
import pytest
from distributed import Client, LocalCluster

SCHEDULERS = ["threads", "processes", "cluster"]


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Client]:
    """A client of a real two-process LocalCluster (with nannies), not set as default."""
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="session")
def process_pool() -> Iterator[ProcessPoolExecutor]:
    """A process pool reused by dask's "processes" scheduler (spawned once per run)."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture(params=SCHEDULERS)
def scheduler(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test body with dask configured for threads, processes or the cluster."""
    name: str = request.param
    if name == "cluster":
        client = request.getfixturevalue("dask_client")
        with dask.config.set(scheduler=client):
            yield name
    elif name == "processes":
        pool = request.getfixturevalue("process_pool")
        with dask.config.set(scheduler="processes", pool=pool):
            yield name
    else:
        with dask.config.set(scheduler="threads"):
            yield name
