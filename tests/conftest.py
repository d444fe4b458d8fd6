"""The fixtures: thin wrappers over `tests.harness`, which the benchmarks share.

A test that uses a fixture of `E2E_FIXTURES` (directly or through another fixture) needs
PostgreSQL, SUMO or a daemon subprocess: collection marks it `e2e`. Every other test is the fast
layer, `pytest -m "not e2e"`, which starts no PostgreSQL and runs no SUMO: nothing here starts
either until a test asks for it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import pg
from tests.harness.daemon import DaemonFactory
from tests.harness.scenarios import SUMO_BIN, Scenarios

E2E_FIXTURES = frozenset({"pg_admin_url", "db_url", "scenarios", "sumo_bin", "daemons"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tryfirst: the mark must be on before `-m` deselects by it.
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


# ---- database ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DATABASE_URL, or an embedded server (one per xdist worker: it starts in about a second)."""
    with pg.admin_url(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture
async def db_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
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
async def daemons(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Daemons for one test; none of them (nor their SUMOs) outlives it."""
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.kill_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client
