"""The fixtures: thin wrappers over `tests.harness`, which the benchmarks share.

A test that uses a fixture of `E2E_FIXTURES` (directly or through another fixture) needs
PostgreSQL, SUMO or a daemon subprocess: collection marks it `e2e`. Every other test is the fast
layer, `pytest -m "not e2e"`, which starts no PostgreSQL and runs no SUMO: nothing here starts
either until a test asks for it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import pg
from tests.harness.daemon import Daemon, DaemonFactory, SharedDaemons
from tests.harness.http import upload
from tests.harness.scenarios import SUMO_BIN, Scenarios

E2E_FIXTURES = frozenset(
    {"pg_admin_url", "db_url", "scenarios", "sumo_bin", "daemons", "module_daemons"}
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the mark must be on before `-m` deselects by it.
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    # The slow tests first: xdist hands tests out in this order, and a worker that started a
    # minute-long test last would be the whole run's tail.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# ---- parallel runs -----------------------------------------------------------------------------

# Most e2e tests wait on a daemon, SUMO or PostgreSQL: six workers beat two even on 2 cores (the
# whole suite in 4:05 against 5:31 with four, on a machine shared with other test runs).
WORKERS = 6


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many workers `-n auto` (pyproject's addopts) starts: none for a run that can select
    no e2e test (`-m "not e2e"`), which would take longer to spread out than to run."""
    if env := os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(env)
    return WORKERS if _may_select_e2e(config.getoption("markexpr")) else 0


def _may_select_e2e(markexpr: str) -> bool:
    if not markexpr:
        return True
    from _pytest.mark.expression import Expression

    def carries(*marks: str) -> Callable[..., bool]:
        return lambda name, **_: name in marks

    expr = Expression.compile(markexpr)
    # The marks an e2e test can carry: e2e, and slow on some.
    return expr.evaluate(carries("e2e")) or expr.evaluate(carries("e2e", "slow"))


def _require_e2e(request: pytest.FixtureRequest) -> None:
    """A test that reaches PostgreSQL or a daemon with getfixturevalue, which collection cannot
    see, fails here unless it carries the e2e mark itself: `-m "not e2e"` must start neither."""
    if request.node.get_closest_marker("e2e") is None:
        pytest.fail(f"{request.node.nodeid} uses {request.fixturename} but is not marked e2e")


# ---- database ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DATABASE_URL, or an embedded server (one per xdist worker: it starts in about a second)."""
    with pg.admin_url(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture
async def db_url(request: pytest.FixtureRequest, pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    _require_e2e(request)
    async with pg.fresh_database(pg_admin_url) as url:
        yield url


# ---- SUMO --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sumo_bin() -> Path:
    """SUMO's programs. A test or fixture that runs one asks for this (and so is e2e)."""
    return SUMO_BIN


@pytest.fixture(scope="session")
def run_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp dir the whole run shares: under xdist, the parent of every worker's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def scenarios(run_tmp: Path, sumo_bin: Path) -> Scenarios:
    """Small real scenarios, each built on first use and shared by every worker of the run."""
    return Scenarios(run_tmp / "scenarios")


# ---- daemons -----------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        # What each daemon of the test said last: often the only clue to a hang.
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, DaemonFactory) and value.started:
                report.sections.append((f"daemons of {name}", value.last_words()))
    return report


@pytest.fixture
async def daemons(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Daemons for one test; none of them (nor their SUMOs) outlives it."""
    _require_e2e(request)
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.kill_all()


@pytest.fixture(scope="module")
async def module_daemons(
    tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str
) -> AsyncIterator[SharedDaemons]:
    """Daemons one module's tests share (`start_fresh`: each on a new database)."""
    async with contextlib.AsyncExitStack() as databases:

        async def new_database() -> str:
            return await databases.enter_async_context(pg.fresh_database(pg_admin_url))

        factory = SharedDaemons(tmp_path_factory.mktemp("module-daemons"), new_database)
        yield factory
        factory.kill_all()  # before their databases are dropped


@pytest.fixture(scope="module")
async def shared_grid3_daemon(module_daemons: SharedDaemons, scenarios: Scenarios) -> Daemon:
    """One daemon for a module's tables of refused requests, with grid3 uploaded once: a
    refused request changes nothing the next case could see."""
    daemon = await module_daemons.start_fresh()
    async with aiohttp.ClientSession() as client:
        await upload(client, daemon, "grid3", scenarios["grid3"])
    return daemon


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client
