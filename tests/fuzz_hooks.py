"""Schemathesis hooks for tests/test_fuzz.py (loaded by `st run` through SCHEMATHESIS_HOOKS).

Fuzzing alone never uploads a scenario SUMO can run, so most generated sessions would name a
template that does not exist and stop at 404. These hooks point most session and sweep bodies at
the template the test uploaded first, so the stateful phase gets real sessions to act on; and
they keep each sweep to a couple of runs, to bound the SUMO work on a shared CI machine. They
also count every request and its answer's status, for the test's report."""

from __future__ import annotations

import atexit
import json
import os
from collections import Counter
from typing import Any

import schemathesis

TEMPLATE = os.environ.get("FUZZ_TEMPLATE", "grid3")
COUNTS: Counter[str] = Counter()
_seen = Counter[str]()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _aim(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    # Every third body keeps the template it was generated with (mostly unknown: a 404).
    _seen["bodies"] += 1
    if _seen["bodies"] % 3:
        body = _bounded({**body, "template": TEMPLATE})
        body.pop("replay_of", None)
        body.pop("version", None)
    return body


def _bounded(body: dict[str, Any]) -> dict[str, Any]:
    """A session that SUMO can run in seconds: valid extremes (scale 100, a step of 1 ms, no
    teleports in a jam) are each a simulation of hours, which would only starve the rest of a
    CI run. Their validation is fuzzed all the same, in the bodies not aimed at the template."""
    options = body.get("sumo_options")
    if isinstance(options, dict):
        options = dict(options)
        if _number(options.get("scale")):
            options["scale"] = min(options["scale"], 1.0)
        if _number(options.get("step-length")):
            options["step-length"] = max(options["step-length"], 0.5)
        body["sumo_options"] = options
    wall = body.get("max_wall_s")
    body["max_wall_s"] = min(wall, 20.0) if _number(wall) else 20.0
    return body


def _small_sweep(body: Any) -> Any:
    if isinstance(body, dict):
        if isinstance(body.get("runs"), int) and not isinstance(body["runs"], bool):
            body["runs"] = min(body["runs"], 2)
        if isinstance(body.get("seeds"), list):
            body["seeds"] = body["seeds"][:2]
        if isinstance(body.get("vary"), dict):
            body["vary"] = {
                k: v[:1] if isinstance(v, list) else v for k, v in list(body["vary"].items())[:1]
            }
    return body


# The test's own token and template: revoking or deleting them would end the run's usefulness
# (every later request a 401, every session a 404), not find anything.
KEEP = set(os.environ.get("FUZZ_KEEP", "").split(","))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Just before each request, whichever phase made it (stateful ones take their values
    from links and earlier answers, after any map_* hook)."""
    method, path = case.method.upper(), case.path
    if method == "POST" and path == "/v1/sessions":
        case.body = _aim(case.body)
    elif method == "POST" and path == "/v1/sweeps":
        case.body = _small_sweep(_aim(case.body))
    elif method == "DELETE" and path.startswith(("/v1/tokens/", "/v1/templates/")):
        params = case.path_parameters or {}
        if params.get("name") in KEEP:
            case.path_parameters = {**params, "name": f"{params['name']}-other"}


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    COUNTS["requests"] += 1
    COUNTS[f"{case.method.upper()} {case.path} {response.status_code}"] += 1


@atexit.register
def _report() -> None:
    path = os.environ.get("FUZZ_COUNTS")
    if path:
        with open(path, "w") as out:
            json.dump(dict(COUNTS), out, indent=1, sort_keys=True)
