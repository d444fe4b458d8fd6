"""The README's Python client example, run as it is written against a real daemon, with a
shorter `end` and matplotlib drawing into a file instead of a window."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import matplotlib

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text().split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


async def test_the_readme_example_runs(daemons, db_url, scenarios, tmp_path, monkeypatch):
    daemon = await daemons.start(db_url, max_running=4)
    grid = scenarios["grid3"]
    shutil.copytree(grid.root, tmp_path / "city")
    (tmp_path / "city" / grid.config).rename(tmp_path / "city" / "city.sumocfg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUMO_SUPERVISOR_URL", daemon.url)
    monkeypatch.delenv("SUMO_SUPERVISOR_TOKEN", raising=False)
    matplotlib.use("Agg")  # plt.show() draws nothing and returns at once

    code = readme_example()
    assert code.count("end=3600") == 1
    namespace: dict[str, object] = {}
    await asyncio.to_thread(exec, code.replace("end=3600", "end=100"), namespace)

    sweep = namespace["client"].get_sweep(namespace["sweep"].id)
    assert sweep.by_status == {"completed": 10}
    queue = namespace["queue"]
    assert list(queue.index) == [float(t) for t in range(10, 101, 10)]
    assert (queue["count"] == 10).all()
    half = namespace["half"]
    # Ten different seeds: the queues differ somewhere, and the interval has a width there.
    assert (half > 0).any()
    figure = namespace["fig"]
    figure.savefig(tmp_path / "queue.png")
    assert (tmp_path / "queue.png").stat().st_size > 10_000
    namespace["client"].close()
