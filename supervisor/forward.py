"""Control of a session that another node runs: the request is sent on, over HTTP, to the API
of the node that holds the session's lease, and its answer is the caller's.

Why HTTP and not a command table: a control request (pause, step, commands, stop) wants its
answer now, from the process that holds the SUMO; the owner's API already checks, applies and
answers it, with the caller's own token (tokens are the database's, valid on every node). The
caller always gets a definite answer: the owner's (acked or failed), 409 `superseded` when the
session changed hands while the request was on its way, 503 with Retry-After when the owner
cannot be reached (its lease lapses within the TTL; the session is then rescued and the same
request meets its new state), or 504 when the owner may have had the request but its answer was
lost (a step or commands sent again could act twice). A request is forwarded at most once. The
live map, a stream, is relayed under the same rules by supervisor/map_relay.py.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog
from aiohttp import web

from actors.errors import AnswerTooLarge, OutcomeUnknown, OwnedElsewhere, SessionConflict

log = structlog.get_logger(component="forward")

# Marks a forwarded request (its value: the forwarding node's id): never forwarded again.
HEADER = "X-Sumo-Supervisor-Forwarded-By"
# The node that answered, on a forwarded answer.
NODE_HEADER = "X-Sumo-Supervisor-Node"
# Beyond the owner's own worst case (30 s to reach its session, 120 s for the session to
# answer), so that its answer is what comes back.
TIMEOUT_S = 170.0
# The owner's headers a caller acts on.
PASSED_ON = ("Retry-After", "WWW-Authenticate", "Location")
MAX_ANSWER = 1 << 20
CLIENT = web.AppKey("forward_client", aiohttp.ClientSession)
# The relayed map streams (supervisor/map_relay.py) have a client of their own: each holds a
# connection for as long as someone watches, and they must not take the connections forwarded
# control requests need. At most this many at once; one more waits its connect timeout, then 503.
RELAY_CLIENT = web.AppKey("relay_client", aiohttp.ClientSession)
MAX_RELAYS = 64


async def client_ctx(app: web.Application) -> Any:
    """The client sessions requests sent on use, closed with the app."""
    app[CLIENT] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S, sock_connect=5),
        # A forward goes to another node's API, never through a proxy from the environment.
        trust_env=False,
    )
    app[RELAY_CLIENT] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=MAX_RELAYS), trust_env=False
    )
    yield
    await app[CLIENT].close()
    await app[RELAY_CLIENT].close()


async def to_owner(
    request: web.Request, owner: dict[str, Any] | None, session_id: str, body: Any
) -> web.Response:
    """Send `request` (its JSON `body` already read, or None) on to `owner`, the node that
    holds the session; its answer."""
    owner = reachable(request, owner, session_id)
    url = owner["api_url"].rstrip("/") + request.rel_url.path_qs
    try:
        async with request.app[CLIENT].request(
            request.method, url, json=body, headers=headers_for(request), allow_redirects=False
        ) as answer:
            data, whole = await read_capped(answer)
            log.info(
                "request_forwarded",
                session_id=session_id,
                node=owner["name"],
                node_id=owner["id"],
                status=answer.status,
            )
            return passed_on(answer, data, whole, owner, session_id)
    except aiohttp.ClientConnectorError as exc:
        # Not even connected: the owner never had the request.
        log.warning("forward_failed", session_id=session_id, node=owner["name"], error=repr(exc))
        raise OwnedElsewhere(
            f"session {session_id} runs on node {owner['name']}, which does not answer: try"
            " again (if the node is gone, the session is rescued within seconds)",
            headers={"Retry-After": "5"},
            node=owner["name"],
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("forward_failed", session_id=session_id, node=owner["name"], error=repr(exc))
        # Sent, then lost: the owner may have acted. Sending it again could step twice or
        # apply commands twice, so the caller is told to look first.
        raise OutcomeUnknown(
            f"session {session_id}: node {owner['name']} may have the request, but its answer"
            " was lost; look at the session before sending it again",
            node=owner["name"],
        ) from None


def reachable(
    request: web.Request, owner: dict[str, Any] | None, session_id: str
) -> dict[str, Any]:
    """`owner`, when a request may be sent on to it; the caller's answer (raised) otherwise."""
    if request.headers.get(HEADER):
        raise SessionConflict(
            f"session {session_id} changed hands while the request was on its way: send it again",
            outcome="superseded",
        )
    if owner is None:
        # Between a lapse and its rescue, or just ended: its state is about to be settled.
        raise OwnedElsewhere(
            f"session {session_id} is changing hands: try again shortly",
            headers={"Retry-After": "2"},
        )
    if not owner["api_url"]:
        raise OwnedElsewhere(
            f"session {session_id} runs on node {owner['name']}, which gives no API URL",
            headers={"Retry-After": "5"},
            node=owner["name"],
        )
    return owner


def headers_for(request: web.Request) -> dict[str, str]:
    """The headers of a request sent on: the caller's token, and the mark that it was sent on."""
    headers = {HEADER: "1"}
    if auth := request.headers.get("Authorization"):
        headers["Authorization"] = auth
    return headers


def passed_on(
    answer: aiohttp.ClientResponse,
    data: bytes,
    whole: bool,
    owner: dict[str, Any],
    session_id: str,
) -> web.Response:
    """The owner's answer (its body read by `read_capped`), as the caller's."""
    if not whole:
        raise AnswerTooLarge(
            f"session {session_id}: node {owner['name']}'s answer is over"
            f" {MAX_ANSWER} bytes, too large to pass on",
            node=owner["name"],
        )
    passed = {h: answer.headers[h] for h in PASSED_ON if h in answer.headers}
    return web.Response(
        body=data,
        status=answer.status,
        content_type=answer.content_type,
        headers={NODE_HEADER: owner["name"], **passed},
    )


async def read_capped(answer: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The answer (one read gives only what has arrived), up to MAX_ANSWER; and whether that
    was all of it."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_ANSWER and (chunk := await answer.content.read(MAX_ANSWER + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER], size <= MAX_ANSWER
