"""Cluster fixtures: a three-node Ray cluster on 127.0.0.1 and a fresh PostgreSQL schema.

Every Ray process binds the loopback address: the nodes get ``node_ip_address``, the
driver ``_node_ip_address``, and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (set before Ray
is imported) stops the driver from swapping the bootstrap address ``127.0.0.1`` for this
machine's outward address.  The cluster and one client are shared by the module's tests
(a local cluster takes tens of seconds to start); the tests run in file order.
"""

from __future__ import annotations

import importlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn
from urllib.parse import quote

import psycopg
import pytest
import pytest_asyncio

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

PG_URL = os.environ.get("TURNGRAPH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = b"cluster-test-secret-0123456789abcdef"
LOOPBACK = "127.0.0.1"
NODE = {"num_cpus": 2, "node_ip_address": LOOPBACK}
_FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}
"""A removed node is declared dead in about 3 s (Ray's default is tens of seconds)."""


def _unreachable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a failure, not a skip)")
    pytest.skip(reason)


def import_ray_or_skip() -> Any:
    """The ``ray`` module; without it the test skips (under ``CI=true`` it fails: the
    dev extra, which ``scripts/test`` installs, includes Ray)."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        _unreachable("Ray is not installed (pip install 'turngraph[ray]')")


@pytest.fixture(scope="module")
def pg_schema_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped after the module."""
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _unreachable(f"PostgreSQL not reachable at {PG_URL}: {exc}".splitlines()[0])
    schema = f"tg_ray_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_URL else "?"
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head and two worker nodes on 127.0.0.1, the driver connected to them."""
    ray = import_ray_or_skip()
    cluster_utils = importlib.import_module("ray.cluster_utils")
    c = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={**NODE, "include_dashboard": False, "_system_config": _FAST_HEALTH},
    )
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes()
        ray.init(address=c.address, _node_ip_address=LOOPBACK)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(cluster: Any, pg_schema_url: str) -> AsyncIterator[Any]:
    """A RaySessions client over the cluster: short leases and probes, so re-hosting
    happens within seconds."""
    from sessions.cluster import RaySessions

    from .models import SlowOnRequest

    import_ray_or_skip().cloudpickle.register_pickle_by_value(
        importlib.import_module("tests.cluster.models")
    )
    async with RaySessions(
        pg_schema_url,
        lease_ttl=2.0,
        probe_interval=0.5,
        probe_timeout=2.0,
        num_cpus=0,
        manager={"store_secret": SECRET, "llm": SlowOnRequest()},
    ) as rs:
        yield rs
