"""What checking a token costs: requests/s of a cheap route (GET /v1/templates) from one client
process, on one daemon, alternately without tokens (loopback, tokenless) and with a token in
every request. Target (issue 12): with auth >= 0.95 of without (a check < 0.1 ms).

    python -m bench.auth_cost [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import start_daemon

CONNECTIONS = 8


async def rate(url: str, headers: dict[str, str], seconds: float) -> float:
    """Requests answered a second, CONNECTIONS at a time, for `seconds`."""
    done = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.get(f"{url}/v1/templates") as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return done / (time.perf_counter() - start)


async def switch(url: str, token: str | None) -> str | None:
    """Tokens on (make one: tokenless, the caller is admin) or off (it revokes itself). Over the
    API, so the daemon's book changes before the answer: rounds can alternate quickly."""
    async with aiohttp.ClientSession() as http:
        if token is None:
            async with http.post(f"{url}/v1/tokens", json={"name": "bench", "role": "admin"}) as r:
                assert r.status == 201, await r.text()
                made: str = (await r.json())["token"]
                return made
        headers = {"Authorization": f"Bearer {token}"}
        async with http.delete(f"{url}/v1/tokens/bench", headers=headers) as r:
            assert r.status == 200, await r.text()
        return None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    seconds, rounds = (0.5, 1) if args.small else (1.5, 12)
    state = Path(tempfile.mkdtemp(prefix="bench-auth-")) / "state"
    daemon = start_daemon(state)
    without: list[float] = []
    with_auth: list[float] = []
    try:
        await rate(daemon.url, {}, seconds / 2)  # warm-up
        for i in range(rounds):
            # Which goes first alternates too: a machine that slows down mid-run favours neither.
            for auth in (i % 2 == 1, i % 2 == 0):
                if auth:
                    token = await switch(daemon.url, None)
                    assert token is not None
                    with_auth.append(
                        await rate(daemon.url, {"Authorization": f"Bearer {token}"}, seconds)
                    )
                    await switch(daemon.url, token)
                else:
                    without.append(await rate(daemon.url, {}, seconds))
    finally:
        daemon.stop()
    a, b = statistics.median(without), statistics.median(with_auth)
    print(f"GET /v1/templates, {CONNECTIONS} connections, medians of {rounds} alternating rounds")
    print(
        f"without tokens {a:,.0f} req/s, with a token {b:,.0f} req/s: ratio {b / a:.3f}"
        " (target >= 0.95)"
    )
    print(f"per request: {(1 / b - 1 / a) * 1e6:+.1f} us with auth")


if __name__ == "__main__":
    asyncio.run(main())
