"""The real CLI, as a subprocess, against a real daemon."""

from __future__ import annotations

import asyncio
import csv
import functools
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from tests.harness.daemon import make_token
from tests.harness.http import create_session, upload, wait_status


def _env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SUMO_SUPERVISOR_TOKEN"}
    return env | ({"SUMO_SUPERVISOR_TOKEN": token} if token else {})


async def cli(
    *args: str, url: str | None = None, token: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "supervisor", *args]
    if url is not None:
        cmd += ["--url", url]
    return await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, text=True, timeout=timeout, env=_env(token)
    )


@pytest.mark.slow
async def test_template_add_run_wait_and_results(daemons, db_url, scenarios, tmp_path):
    # Every command here runs with SUMO_SUPERVISOR_TOKEN against a daemon that needs one.
    token = await make_token(db_url, "cli", "operator")
    daemon = await daemons.start(db_url)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        with_token = functools.partial(cli, token=token)
        await _add_run_wait_and_results(daemon, with_token, http, scenarios, tmp_path)
    assert not [line for line in daemon.raw if token in line]


async def _add_run_wait_and_results(daemon, cli, http, scenarios, tmp_path):
    nested = scenarios["nested"]
    # The config names files in sibling folders (../net, ../demand, ../add) and a .gz net.
    added = await cli(
        "template", "add", "city", str(nested.root / nested.config), "--json", url=daemon.url
    )
    assert added.returncode == 0, added.stderr
    body = json.loads(added.stdout)
    assert {f["path"] for f in body["files"]} == {
        "cfg/scenario.sumocfg", "net/spider.net.xml.gz", "demand/routes.rou.xml", "add/detectors.add.xml",
    }  # fmt: skip
    listed = await cli("template", "list", url=daemon.url)
    assert listed.returncode == 0 and "city" in listed.stdout
    shown = await cli("template", "show", "city", "--json", url=daemon.url)
    assert json.loads(shown.stdout)["versions"][0]["version"] == 1

    ran = await cli(
        "run", "city", "--seed", "5", "--end", "300", "--record", "samples,trips", "--label", "cli",
        "--wait", "--json", url=daemon.url,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    session = json.loads(ran.stdout)
    assert session["status"] == "completed" and session["sim_time"] == 300

    ps = await cli("ps", "--label", "cli", "--json", url=daemon.url)
    assert [s["id"] for s in json.loads(ps.stdout)] == [session["id"]]
    table = await cli("ps", url=daemon.url)
    assert session["id"][:12] in table.stdout and "completed" in table.stdout

    out = tmp_path / "samples.csv"
    got = await cli("get", session["id"], "samples", "-o", str(out), url=daemon.url)
    assert got.returncode == 0, got.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30 and rows[-1]["sim_time"] == "300"
    trips = await cli("get", session["id"], "trips", url=daemon.url)
    assert trips.stdout.startswith("vehicle,vtype,depart")

    summary = await cli("summary", session["id"], "--json", url=daemon.url)
    figures = json.loads(summary.stdout)
    assert figures["arrived"] == sum(int(r["arrived"]) for r in rows)
    logs = await cli("logs", session["id"], "--json", url=daemon.url)
    assert "session_ended" in [e["event"] for e in json.loads(logs.stdout)]
    shown = await cli("show", session["id"], url=daemon.url)
    assert "completed" in shown.stdout

    other = json.loads(
        (
            await cli(
                "run", "city", "--seed", "6", "--end", "300", "--sample-detail", "exact", "--json",
                url=daemon.url,
            )
        ).stdout
    )  # fmt: skip
    assert other["request"]["sample_detail"] == "exact"
    assert session["request"]["sample_detail"] == "period"
    await wait_status(http, daemon, other["id"], "completed")
    compared = await cli("compare", session["id"], other["id"], "--json", url=daemon.url)
    assert len(json.loads(compared.stdout)["sessions"]) == 2
    table = await cli("compare", session["id"], other["id"], url=daemon.url)
    assert "arrived" in table.stdout


async def test_run_wait_fails_for_a_scenario_sumo_refuses(daemons, db_url, scenarios):
    daemon = await daemons.start(db_url)
    broken = scenarios["broken"]
    assert (
        await cli("template", "add", "broken", str(broken.root / broken.config), url=daemon.url)
    ).returncode == 0
    ran = await cli("run", "broken", "--wait", url=daemon.url)
    assert ran.returncode == 1
    assert "failed" in ran.stderr and "no_such_edge" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_watch_and_stop(daemons, db_url, scenarios):
    token = await make_token(db_url, "cli", "operator")
    daemon = await daemons.start(db_url)
    long = scenarios["long"]
    await cli("template", "add", "long", str(long.root / long.config), url=daemon.url, token=token)
    started = json.loads((await cli("run", "long", "--json", url=daemon.url, token=token)).stdout)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "watch", started["id"], "--url", daemon.url],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(token),
    )
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        await wait_status(http, daemon, started["id"], "running")
    stopped = await cli("stop", started["id"], url=daemon.url, token=token)
    assert stopped.returncode == 0
    output, _ = await asyncio.to_thread(watcher.communicate, timeout=60)
    lines = output.splitlines()
    assert any(line.startswith("t=") and "vehicles=" in line for line in lines)
    assert lines[-1] == "status stopped"


async def test_errors_are_one_clear_line(daemons, db_url, tmp_path):
    daemon = await daemons.start(db_url)
    missing = await cli("show", "nope", url=daemon.url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no session 'nope' (HTTP 404)"
    bad = await cli("run", "no-such-template", url=daemon.url)
    assert bad.returncode == 1 and "no template 'no-such-template'" in bad.stderr
    cfg = tmp_path / "x.sumocfg"
    cfg.write_text('<configuration><input><net-file value="gone.net.xml"/></input></configuration>')
    absent = await cli("template", "add", "x", str(cfg), url=daemon.url)
    assert absent.returncode == 1 and "net-file=gone.net.xml, not found" in absent.stderr
    down = await cli("ps", url="http://127.0.0.1:9")
    assert down.returncode == 1
    assert "no daemon answers at http://127.0.0.1:9" in down.stderr
    assert "Traceback" not in down.stderr + missing.stderr + bad.stderr + absent.stderr


async def test_a_missing_or_wrong_token_is_one_clear_line(daemons, db_url):
    token = await make_token(db_url, "someone", "reader")
    daemon = await daemons.start(db_url)
    missing = await cli("ps", url=daemon.url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: the daemon at {daemon.url} needs a token: set SUMO_SUPERVISOR_TOKEN (make one"
        " with `sumo-supervisor token create NAME --role operator`)"
    )
    wrong = await cli("ps", url=daemon.url, token="sst_wrong")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        f"error: the daemon at {daemon.url} refused SUMO_SUPERVISOR_TOKEN: the token is unknown"
        " or revoked"
    )
    small = await cli("run", "x", url=daemon.url, token=token)
    assert small.returncode == 1
    assert small.stderr.strip() == (
        "error: not allowed: token 'someone' has the role reader; this needs operator"
    )
    assert (await cli("ps", url=daemon.url, token=token)).returncode == 0
    for result in (missing, wrong, small):
        assert "Traceback" not in result.stderr and token not in result.stderr


async def test_error_text_with_brackets_prints_literally(daemons, db_url, scenarios, tmp_path):
    """Rich would read '[/such]' as a closing markup tag and crash; it is printed as it is."""
    broken = scenarios["broken"]
    for name, data in broken.files().items():
        (tmp_path / name).write_bytes(data.replace(b"no_such_edge", b"no[/such]edge"))
    daemon = await daemons.start(db_url)
    added = await cli("template", "add", "brackets", str(tmp_path / broken.config), url=daemon.url)
    assert added.returncode == 0, added.stderr
    ran = await cli("run", "brackets", "--wait", url=daemon.url)
    assert ran.returncode == 1
    assert "no[/such]edge" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr


async def test_storage(daemons, db_url, scenarios, http):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    done = await create_session(http, daemon, template="grid3", end=50)
    await wait_status(http, daemon, done["id"], "completed")
    shown = await cli("storage", "--json", url=daemon.url)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert [t["name"] for t in report["templates"]] == ["grid3"]
    assert [s["id"] for s in report["sessions"]] == [done["id"]]
    assert report["sessions"][0]["rows"]["samples"] > 0
    table = await cli("storage", "--limit", "5", url=daemon.url)
    assert table.returncode == 0, table.stderr
    assert "grid3" in table.stdout and done["id"] in table.stdout
    assert "1 of 1 sessions" in table.stdout
