"""Upload checks: every way a scenario could make SUMO write (or read) outside its session, each
shown to work on bare SUMO and then refused by the daemon with a 4xx that names the file and the
option; DTDs whatever the file's name or compression; a compression bomb refused with little
memory; legitimate outputs still accepted; only a few uploads checked at once."""

from __future__ import annotations

import asyncio
import gzip
import os
import struct
import subprocess
import threading
import tracemalloc
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors import scenario
from actors.errors import Busy, InvalidTemplate, PayloadTooLarge, SupervisorError
from supervisor.config import ConfigError, load_config
from tests.harness.http import create_session, template_form, wait_status
from tests.harness.poll import wait_until
from tests.harness.scenarios import SUMO_BIN, Scenario

CFG = "long.sumocfg"


# ---- scenarios that try to get out -------------------------------------------------------------


def _config(output: str = "", additional: str | None = None) -> bytes:
    extra = f'<additional-files value="{additional}"/>' if additional else ""
    return (
        "<configuration>\n"
        '  <input><net-file value="net.net.xml"/><route-files value="flows.rou.xml"/>'
        f"{extra}</input>\n"
        f"  <output>{output}</output>\n"
        '  <time><end value="20"/></time>\n'
        "</configuration>\n"
    ).encode()


def _first_lane(scenario: Scenario) -> str:
    for lane in ET.parse(scenario.root / "net.net.xml").iter("lane"):
        if not lane.attrib["id"].startswith(":"):
            return lane.attrib["id"]
    raise AssertionError("no lane")


def _loop(lane: str, file: str) -> bytes:
    return (
        f'<additional><inductionLoop id="escape" lane="{lane}" pos="5" period="5" file="{file}"/>'
        "</additional>"
    ).encode()


# Each case: the files it adds or replaces (given the outside directory and a lane of the net),
# and what the daemon's error must say. The template sits in <tmp>/tpl, the outside in
# <tmp>/outside, so "../outside" is a way out too.
Case = tuple[Callable[[str, str], dict[str, bytes]], list[str]]
ESCAPES: dict[str, Case] = {
    "v_attribute": (
        lambda out, lane: {CFG: _config(f'<queue-output v="{out}/queue.xml"/>')},
        ["option queue-output", "not absolute"],
    ),
    "unlisted_output_option": (
        lambda out, lane: {CFG: _config(f'<netstate-dump value="{out}/netstate.xml"/>')},
        ["option netstate-dump", "not absolute"],
    ),
    "nested_option_element": (
        lambda out, lane: {
            CFG: _config(
                f'<deeper><still><summary-output value="{out}/summary.xml"/></still></deeper>'
            )
        },
        ["option summary-output", "not absolute"],
    ),
    "option_as_text": (
        lambda out, lane: {CFG: _config(f"<netstate-dump>{out}/text.xml</netstate-dump>")},
        ["option netstate-dump", "not absolute"],
    ),
    "relative_escape": (
        lambda out, lane: {CFG: _config('<netstate-dump value="../outside/relative.xml"/>')},
        ["option netstate-dump", "points outside the template"],
    ),
    "environment_variable": (
        lambda out, lane: {CFG: _config('<netstate-dump value="${ESCAPE_DIR}/env.xml"/>')},
        ["option netstate-dump", "${ESCAPE_DIR}"],
    ),
    "home_directory": (
        lambda out, lane: {CFG: _config('<netstate-dump value="~/home.xml"/>')},
        ["option netstate-dump", "'~'"],
    ),
    "output_prefix": (
        lambda out, lane: {
            CFG: _config('<output-prefix value="../outside/"/><netstate-dump value="p.xml"/>')
        },
        ["option output-prefix", "must not contain '/'"],
    ),
    "non_xml_additional_file": (
        lambda out, lane: {
            "extra.add": _loop(lane, f"{out}/loop.xml"),
            CFG: _config(additional="extra.add"),
        },
        ["extra.add", "<inductionLoop> attribute file", "not absolute"],
    ),
    "dest_attribute": (
        lambda out, lane: {
            "tls.add": f'<additional><timedEvent type="SaveTLSStates" dest="{out}/tls.xml"/>'
            "</additional>".encode(),
            CFG: _config(additional="tls.add"),
        },
        ["tls.add", "<timedEvent> attribute dest", "not absolute"],
    ),
    "compressed_file_with_another_name": (
        lambda out, lane: {
            "extra.dat": gzip.compress(_loop(lane, f"{out}/gz.xml")),
            CFG: _config(additional="extra.dat"),
        },
        ["extra.dat", "<inductionLoop> attribute file", "not absolute"],
    ),
}
DTD = b'<!DOCTYPE additional [<!ENTITY big "0123456789">]><additional id="&big;"/>'
REFUSED_DTDS: dict[str, Case] = {
    "dtd_in_add_file": (
        lambda out, lane: {"extra.add": DTD, CFG: _config(additional="extra.add")},
        ["extra.add", "entities and DTDs are not allowed"],
    ),
    "dtd_in_gz_file": (
        lambda out, lane: {"extra.add.gz": gzip.compress(DTD)},
        ["extra.add.gz", "entities and DTDs are not allowed"],
    ),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_each_escape_works_on_bare_sumo(case, scenarios, tmp_path):
    """The cases are real: run by SUMO itself, each one writes outside the template."""
    long = scenarios["long"]
    root, outside = tmp_path / "tpl", tmp_path / "outside"
    outside.mkdir()
    make, _ = ESCAPES[case]
    for path, data in {**long.files(), **make(str(outside), _first_lane(long))}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    env = {**os.environ, "HOME": str(outside), "ESCAPE_DIR": str(outside)}
    subprocess.run(
        [SUMO_BIN / "sumo", "-c", CFG, "--no-step-log", "true"],
        cwd=root, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert list(outside.iterdir()), f"{case}: SUMO wrote nothing outside"


async def test_daemon_refuses_every_escape_and_dtd(daemons, db_url, http, scenarios, tmp_path):
    daemon = await daemons.start(db_url)
    long = scenarios["long"]
    outside = tmp_path / "outside"
    outside.mkdir()
    lane = _first_lane(long)
    wrong = []
    for case, (make, fragments) in {**ESCAPES, **REFUSED_DTDS}.items():
        files = {**long.files(), **make(str(outside), lane)}
        async with http.post(
            f"{daemon.url}/v1/templates", data=template_form("x", long, files, CFG)
        ) as r:
            status, body = r.status, await r.json()
        if status != 422 or not all(f in body["error"] for f in fragments):
            wrong.append((case, status, body))
    assert wrong == []
    async with http.get(f"{daemon.url}/v1/templates") as r:
        assert (await r.json())["templates"] == []
    assert list(outside.iterdir()) == []


async def test_legitimate_outputs_are_accepted_and_land_in_the_session(
    daemons, db_url, http, scenarios
):
    """Relative outputs (the config's own, a detector's file=), a .gz net, subfolders, a
    non-.xml additional, ${PID} and a clock time all pass; SUMO writes inside its session."""
    daemon = await daemons.start(db_url)
    nested = scenarios["nested"]
    files = nested.files()
    lane = _first_lane_of(files["add/detectors.add.xml"])
    files["add/more.add"] = _loop(lane, "../out.${PID}.loop.xml")
    files["cfg/scenario.sumocfg"] = (
        b"<configuration>\n"
        b'  <input><net-file value="../net/spider.net.xml.gz"/>'
        b'<route-files value="../demand/routes.rou.xml"/>'
        b'<additional-files value="../add/detectors.add.xml,../add/more.add"/></input>\n'
        b'  <output><netstate-dump value="netstate.out.xml"/>'
        b'<tripinfo-output v="../trips.out.xml"/></output>\n'
        b'  <time><begin>0</begin><end value="700"/></time>\n'
        b"</configuration>\n"
    )
    async with http.post(
        f"{daemon.url}/v1/templates", data=template_form("legit", nested, files)
    ) as r:
        assert r.status == 201, await r.json()
    session = await create_session(http, daemon, template="legit", mode="stepped")
    await wait_status(http, daemon, session["id"], "running")
    workdir = daemon.state_dir / "sessions" / session["id"]
    written = {p.name for p in workdir.rglob("*.out.xml")} | {
        p.name for p in workdir.rglob("*.loop.xml")
    }
    assert {"netstate.out.xml", "trips.out.xml", "loop0.out.xml"} <= written, written
    assert any(name.startswith("out.") for name in written), written
    async with http.post(f"{daemon.url}/v1/sessions/{session['id']}/stop") as r:
        assert r.status == 202
    await wait_status(http, daemon, session["id"], "stopped")


def _first_lane_of(additional: bytes) -> str:
    loop = ET.fromstring(additional).find("inductionLoop")
    assert loop is not None
    return loop.attrib["lane"]


# ---- the compression bomb ----------------------------------------------------------------------


def gzip_bomb(spaces: int, prefix: bytes, suffix: bytes) -> bytes:
    """A valid gzip file of prefix, `spaces` bytes of spaces (whole MiBs) and suffix, built in
    milliseconds: deflate restarts after a full flush, so every MiB of spaces compresses to the
    same bytes, which are simply repeated."""
    mib = 1 << 20
    blocks = spaces // mib
    mib_of_spaces = b" " * mib
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(mib_of_spaces) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(mib_of_spaces) + deflate.flush(zlib.Z_FULL_FLUSH) == block
    tail = deflate.compress(suffix) + deflate.flush()
    crc = zlib.crc32(prefix)
    for _ in range(blocks):
        crc = zlib.crc32(mib_of_spaces, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + blocks * mib + len(suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + head + block * blocks + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


BOMB_PREFIX, BOMB_SUFFIX = b"<additional>", b"</additional>"


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb(1 << 30, BOMB_PREFIX, BOMB_SUFFIX)


def test_bomb_is_what_it_says():
    small = gzip_bomb(8 << 20, BOMB_PREFIX, BOMB_SUFFIX)
    assert gzip.decompress(small) == BOMB_PREFIX + b" " * (8 << 20) + BOMB_SUFFIX


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _reset_peak(pid: int) -> bool:
    """Make VmHWM start again from the current RSS (Linux: clear_refs 5), when allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def test_compression_bomb_gets_413_and_little_memory(daemons, db_url, http, scenarios, bomb):
    assert len(bomb) < 1_200_000  # 1 GiB inflated, about 1 MB on the wire
    daemon = await daemons.start(db_url)
    grid = scenarios["grid3"]
    pid = daemon.proc.pid
    reset = _reset_peak(pid)
    before = _memory_kib(pid)
    files = {**grid.files(), "extra.add.gz": bomb}
    async with http.post(f"{daemon.url}/v1/templates", data=template_form("x", grid, files)) as r:
        status, body = r.status, await r.json()
    after = _memory_kib(pid)
    growth_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"daemon memory (peak reset: {reset}): before {before}, after {after} kB; "
          f"peak grew by {growth_mb:.1f} MB")  # fmt: skip
    assert status == 413, body
    assert "extra.add.gz" in body["error"] and "inflates to more than" in body["error"], body
    assert growth_mb < 50
    async with http.get(f"{daemon.url}/v1/templates") as r:
        assert (await r.json())["templates"] == []


# ---- only a few checks at once -----------------------------------------------------------------


async def test_a_check_beyond_the_slots_gets_503(daemons, db_url, http, scenarios, bomb):
    # One slot, no wait; a check that inflates and parses the whole GiB keeps it for seconds.
    env = {
        "SUMO_SUPERVISOR_UPLOAD_CHECKS": "1",
        "SUMO_SUPERVISOR_UPLOAD_CHECK_WAIT_S": "0",
        "SUMO_SUPERVISOR_MAX_INFLATED_BYTES": str(2 << 30),
    }
    daemon = await daemons.start(db_url, env=env)
    grid = scenarios["grid3"]

    async def post(name: str, files: dict[str, bytes]) -> tuple[int, dict[str, Any]]:
        form = template_form(name, grid, files)
        async with http.post(f"{daemon.url}/v1/templates", data=form) as r:
            return r.status, await r.json()

    slow = asyncio.ensure_future(post("slow", {**grid.files(), "extra.add.gz": bomb}))
    try:
        await wait_until(lambda: daemon.events("template_checking", template="slow"), "check")
        status, body = await post("quick", grid.files())
        assert (status, "uploads are being checked" in body["error"]) == (503, True), body
        assert not slow.done()
        status, body = await slow
        assert status == 201, body
    finally:
        slow.cancel()
    # The slot is free again.
    assert (await post("quick", grid.files()))[0] == 201


async def test_check_slots_hold_until_the_thread_ends():
    slots = scenario.CheckSlots(1, wait_s=0)
    started, release = threading.Event(), threading.Event()

    def first_check() -> bool:
        started.set()
        return release.wait(60)

    first = asyncio.ensure_future(slots.run(first_check))
    assert await asyncio.to_thread(started.wait, 60)
    with pytest.raises(Busy):
        await slots.run(lambda: "second")
    # A cancelled request does not free the slot while its check still runs.
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with pytest.raises(Busy):
        await slots.run(lambda: "third")
    release.set()
    assert await asyncio.wait_for(_run_when_free(slots), 60) == "fourth"


async def _run_when_free(slots: scenario.CheckSlots) -> str:
    while True:
        try:
            return await slots.run(lambda: "fourth")
        except Busy:
            await asyncio.sleep(0.01)


# ---- the checks themselves, without a daemon -----------------------------------------------------


def _refusal(files: dict[str, bytes], config: str = "a.sumocfg", **kw: Any) -> SupervisorError:
    with pytest.raises(SupervisorError) as caught:
        scenario.check_upload(config, files, **kw)
    return caught.value


@pytest.fixture
def grid(scenarios) -> dict[str, bytes]:
    files = scenarios["grid3"].files()
    files["a.sumocfg"] = files.pop("grid3.sumocfg")
    return files


def test_options_are_read_as_sumo_reads_them():
    cfg = (
        b"<configuration>"
        b'<input><net-file v="n.net.xml"/><route-files value="r.rou.xml"/></input>'
        b"<a><b><c><netstate-dump>\n  nd.xml\n</netstate-dump></c></b></a>"
        b'<seed value="4"/>'
        # OptionsLoader gives text to the element started last: here <ignored>, not <end>.
        b"<time><end><ignored/>600</end></time>"
        b"</configuration>"
    )
    assert scenario.sumocfg_options(cfg, "x.sumocfg") == [
        ("input", "net-file", "n.net.xml"),
        ("input", "route-files", "r.rou.xml"),
        ("c", "netstate-dump", "\n  nd.xml\n"),
        ("configuration", "seed", "4"),
        ("end", "ignored", "600"),
    ]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ('<fcd-output value="/tmp/x.xml"/>', "option fcd-output='/tmp/x.xml' must be a relative"),
        ('<fcd-output value="ok.xml,/tmp/x.xml"/>', "option fcd-output='/tmp/x.xml'"),
        ('<fcd-output value="ok.xml;../x.xml"/>', "option fcd-output='../x.xml' points outside"),
        ('<fcd-output value=" /tmp/x.xml"/>', "must be a relative path"),
        ('<device.ssm.file value="${HOME}/x"/>', "option device.ssm.file='${HOME}/x' uses"),
        ('<error-log value="~/x"/>', "option error-log='~/x' starts with '~'"),
        ('<output-suffix value="/../../x"/>', "option output-suffix='/../../x' must not contain"),
        ('<tripinfo-output value="db.example:5432"/>', "names a network address"),
        ('<tripinfo-output value="[::1]:5432"/>', "names a network address"),
        ('<save-state.files value="a/../../x"/>', "points outside the template"),
        ("<configuration-file>/etc/other.cfg</configuration-file>", "configuration-file"),
    ],
)
def test_option_values_that_reach_outside_are_refused(grid, option, message):
    cfg = grid["a.sumocfg"].replace(b"</configuration>", option.encode() + b"</configuration>")
    error = _refusal({**grid, "a.sumocfg": cfg})
    assert isinstance(error, InvalidTemplate)
    assert message in error.message and error.message.startswith("a.sumocfg: ")


@pytest.mark.parametrize(
    ("option", "missing"),
    [
        ('<output><fcd-output.filter-edges.input-file value="edges.txt"/></output>', "edges.txt"),
        ('<ssm><device.ssm.filter-edges.input-file v="sub/e.txt"/></ssm>', "sub/e.txt"),
        ('<routing><astar.landmark-distances value="lm.csv"/></routing>', "lm.csv"),
        ('<routing><astar.all-distances value="all.csv"/></routing>', "all.csv"),
        ('<replay><device.fcd-replay.files value="fcd.xml"/></replay>', "fcd.xml"),
        ("<input><load-state>state.xml</load-state></input>", "state.xml"),
    ],
)
def test_an_input_the_upload_lacks_is_refused_naming_it(grid, option, missing):
    """SUMO reads these files (each stops bare SUMO at start when missing), whichever section
    the option is in: a template without them could never start."""
    cfg = grid["a.sumocfg"].replace(b"</configuration>", option.encode() + b"</configuration>")
    error = _refusal({**grid, "a.sumocfg": cfg})
    assert isinstance(error, InvalidTemplate)
    assert f"{missing!r}, which is not in the upload" in error.message, error.message
    scenario.check_upload("a.sumocfg", {**grid, "a.sumocfg": cfg, missing: b"<x/>"})


@pytest.mark.parametrize(
    "change",
    [
        {"a.sumocfg": b'<output><tripinfo-output value="_supervisor/trips.csv"/></output>'},
        {"a.sumocfg": b'<output><fcd-output value="x/../_supervisor/fcd.csv"/></output>'},
        {"d.add.xml": b'<additional><edgeData id="e" file="_supervisor/edges.csv"/></additional>'},
        {"_supervisor/own.xml": b"<x/>"},
    ],
)
def test_the_daemons_recording_dir_is_not_the_configs(grid, change):
    """The daemon's recordings go to _supervisor/ in the session dir: a config's output there
    would be a second writer on one file, and an uploaded file there is removed at start."""
    files = dict(grid)
    for path, data in change.items():
        if path == "a.sumocfg":
            files[path] = grid[path].replace(b"</configuration>", data + b"</configuration>")
        else:
            files[path] = data
    error = _refusal(files)
    assert isinstance(error, InvalidTemplate)
    assert "_supervisor" in error.message, error.message


def test_harmless_values_pass(grid):
    cfg = grid["a.sumocfg"].replace(
        b"</configuration>",
        b'<output><tripinfo-output value="trips-${PID}-${UTC}.xml"/>'
        b'<output-prefix value="run1_"/><log value="sumo.log"/>'
        b'<summary-output value="/dev/null"/></output>'
        b'<time><begin value="10:00:00"/><step-length v="0.5"/></time>'
        b'<processing><time-to-teleport value="-1"/></processing></configuration>',
    )
    add = (
        b'<additional><poly id="p" shape="0,0 10,0 10,10" type="a b" name="A / B &amp; C"/>'
        b'<param key="k" value="x...y"/></additional>'
    )
    scenario.check_upload("a.sumocfg", {**grid, "a.sumocfg": cfg, "sub/dir/x.add": add})


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("x.add", b'<a><b href="../../../etc/passwd"/></a>', "<b> attribute href='../../"),
        ("sub/x.add", b'<a file="../ok.xml" dest="../../no.xml"/>', "attribute dest='../../no"),
        ("x.add", b'<a imgFile="~root/.ssh/id"/>', "<a> attribute imgFile='~root/.ssh/id'"),
        ("x.add", b'<a file="127.0.0.1:8750"/>', "names a network address"),
        ("x.add", b'<a any="${PWD}/../.."/>', "uses ${PWD}"),
        ("x.add", b"   \n<!DOCTYPE a><a/>", "entities and DTDs are not allowed"),
        ("x.txt", zlib.compress(b"<!DOCTYPE a><a/>"), "entities and DTDs are not allowed"),
        ("x.txt", "<!DOCTYPE a><a/>".encode("utf-16"), "entities and DTDs are not allowed"),
        ("notes.txt", b"text, then <!ENTITY x 'y'>", "entities and DTDs are not allowed"),
        ("x.bin", '<?xml version="1.0" encoding="cp037"?><a/>'.encode("cp037"), "well-formed"),
        ("x.bin", '<?xml version="1.0" encoding="sjis"?><a/>'.encode("sjis"), "unreadable XML"),
        ("x.add", b"<a>" * 101 + b"</a>" * 101, "nested deeper than 100"),
        ("x.add", b"<a>" + b"".join(b"<e%d/>" % i for i in range(10_001)) + b"</a>", "names"),
        ("x.add", b'<a b="' + b"x" * (9 << 20) + b'"/>', "longer than 8388608 bytes"),
        ("x.add.gz", b"not gzip", "not a valid gzip file"),
        ("x.add.gz", gzip.compress(b"<a/>" * 999, mtime=0)[:-30], "not a valid gzip file"),
        ("x.add.gz", gzip.compress(b"<a/>", mtime=0) + b"trailing", "not a valid gzip file"),
        ("x.xml", b"plain words", "not well-formed XML"),
    ],
)
def test_scenario_files_are_checked_by_content(grid, path, data, message):
    error = _refusal({**grid, path: data})
    assert error.status == 422
    assert message in error.message and error.message.startswith(path), error.message


def test_files_that_are_not_xml_are_kept_as_they_are(grid):
    files = {
        **grid,
        "notes.txt": b"see /etc/passwd and ../../x",
        "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00",
        "empty.dat": b"",
        "two.add.gz": gzip.compress(b"<a>") + gzip.compress(b"</a>") + b"\0\0",
    }
    _sha, stored = scenario.check_upload("a.sumocfg", files)
    assert {f.path: f.content for f in stored} == files


def test_inflate_cap_is_counted_while_inflating(grid):
    bomb = gzip_bomb(64 << 20, BOMB_PREFIX, BOMB_SUFFIX)
    tracemalloc.start()
    try:
        error = _refusal({**grid, "b.add": bomb}, max_inflated_bytes=32 << 20)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, PayloadTooLarge) and error.status == 413
    assert "b.add: inflates to more than 33554432 bytes" in error.message
    assert peak < 4 << 20, peak  # a few chunks, never the file
    # Under the cap, the same file is fine.
    scenario.check_upload("a.sumocfg", {**grid, "b.add": bomb}, max_inflated_bytes=65 << 20)


def test_a_config_is_small(grid):
    cfg = grid["a.sumocfg"].replace(b"</configuration>", b" " * (4 << 20) + b"</configuration>")
    error = _refusal({**grid, "a.sumocfg": gzip.compress(cfg)})
    assert error.status == 413 and "a.sumocfg: inflates to more than 4194304" in error.message


def test_upload_settings():
    cfg = load_config({}, {})
    assert (cfg.max_inflated_bytes, cfg.upload_checks, cfg.upload_check_wait_s) == (
        256 << 20,
        2,
        2.0,
    )
    env = {
        "SUMO_SUPERVISOR_MAX_INFLATED_BYTES": "1000",
        "SUMO_SUPERVISOR_UPLOAD_CHECKS": "3",
        "SUMO_SUPERVISOR_UPLOAD_CHECK_WAIT_S": "0",
    }
    cfg = load_config({}, env)
    assert (cfg.max_inflated_bytes, cfg.upload_checks, cfg.upload_check_wait_s) == (1000, 3, 0.0)
    for name, value in (("UPLOAD_CHECKS", "0"), ("UPLOAD_CHECK_WAIT_S", "-1")):
        with pytest.raises(ConfigError, match=name.lower()):
            load_config({}, {f"SUMO_SUPERVISOR_{name}": value})
