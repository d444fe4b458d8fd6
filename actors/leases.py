"""A node's leases: renewing its own, noticing the ones it lost, and rescuing other nodes'
sessions whose lease lapsed.

Owns the rhythm and the deadline, not the sessions: it asks its owner (the supervisor actor)
what it holds and tells it what it lost, through plain calls on the same event loop. Those calls
are synchronous on purpose: a node that can no longer renew must kill its SUMO processes before
its leases lapse, and that must not wait behind a supervisor busy with a store that hangs.

The lease lapses `ttl_s` after the database's clock stamped the last renewal, which is later
than this node sent it: counting from the sending time on this node's monotonic clock, a node
that gives up at `ttl_s - renew_s` has killed its SUMOs before any other node may rescue them.
A node frozen past that (SIGSTOP, a VM paused) finds on waking that the deadline has passed, and
kills first; what it writes meanwhile is fenced and changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

import structlog

from actors.store import Lapsed, Store

# Lapsed sessions taken on in one round at most: the rest wait for the next round.
RESCUE_BATCH = 50


class LeaseOwner(Protocol):
    """What the keeper needs of the supervisor actor."""

    def held_leases(self) -> Mapping[str, int]:
        """The sessions this node runs, with the epoch of each one's lease."""
        ...

    def leases_lost(self, session_ids: set[str], why: str) -> None:
        """Kill those sessions' SUMO now; they end without writing (fenced)."""
        ...

    async def rescue(self, lapsed: list[Lapsed]) -> None:
        """Take over lapsed sessions of other nodes (rerun or fail them)."""
        ...


class LeaseKeeper:
    def __init__(
        self, store: Store, node_id: str, owner: LeaseOwner, *, ttl_s: float, renew_s: float
    ) -> None:
        self._store = store
        self._node_id = node_id
        self._owner = owner
        self._ttl_s = ttl_s
        self._renew_s = renew_s
        self._log = structlog.get_logger(component="leases").bind(node_id=node_id)
        # When the last renewal that the database took was sent (monotonic).
        self._renewed_at = time.monotonic()
        self._fenced = False
        self._stopped = False

    @property
    def give_up_at(self) -> float:
        return self._renewed_at + self._ttl_s - self._renew_s

    @property
    def healthy(self) -> bool:
        """False while this node cannot renew: it should claim nothing new."""
        return not self._fenced

    def stop(self) -> None:
        """End `run` at its next turn, even should a cancellation of it be lost."""
        self._stopped = True

    async def run(self) -> None:
        # The clock starts with the first round, not with construction (a slow start-up
        # recovery must not count as time without renewals).
        self._renewed_at = time.monotonic()
        while not self._stopped:
            round_at = time.monotonic()
            await self._renew()
            await self._rescue()
            await asyncio.sleep(max(0.0, round_at + self._renew_s - time.monotonic()))

    def check_deadline(self) -> None:
        """Past the deadline with leases held: kill them all now (also called by the owner when
        it wakes, so that a node that was frozen kills before anything else it does)."""
        if self._fenced or time.monotonic() < self.give_up_at:
            return  # (once fenced, nothing more is claimed until a renewal gets through)
        held = set(self._owner.held_leases())
        if held:
            self._log.error(
                "leases_unrenewable",
                sessions=len(held),
                since_s=round(time.monotonic() - self._renewed_at, 1),
            )
            self._owner.leases_lost(held, "lease could not be renewed")
        self._fenced = True

    async def _renew(self) -> None:
        self.check_deadline()
        held = dict(self._owner.held_leases())
        sent = time.monotonic()
        try:
            timeout = max(0.1, min(self._renew_s, self.give_up_at - sent))
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation
            # that meets the inner call's end, and the keeper would outlive its owner.
            async with asyncio.timeout(timeout):
                renewed = await self._store.renew(self._node_id, self._ttl_s, held)
        except Exception as exc:  # the database away, or slow: the deadline decides
            self._log.warning("lease_renew_failed", error=repr(exc))
            self.check_deadline()
            return
        self._renewed_at = sent
        if self._fenced:
            self._log.info("leases_renewable_again")
            self._fenced = False
        # A session that ended meanwhile is no longer held, and was not lost.
        still = self._owner.held_leases()
        lost = {i for i in held if i not in renewed and still.get(i) == held[i]}
        if lost:
            self._log.error("leases_lost", sessions=sorted(lost))
            self._owner.leases_lost(lost, "lease lost to another node")

    async def _rescue(self) -> None:
        if self._fenced:
            return
        try:
            async with asyncio.timeout(self._renew_s):
                lapsed = await self._store.lapsed(RESCUE_BATCH)
        except Exception as exc:
            self._log.warning("lapsed_read_failed", error=repr(exc))
            return
        mine = self._owner.held_leases()
        # This node's own lapsed sessions end through their actors.
        theirs = [x for x in lapsed if x.record.id not in mine]
        if theirs:
            try:
                # Bounded: the next renewal must not wait behind a slow rescue.
                async with asyncio.timeout(self._renew_s):
                    await self._owner.rescue(theirs)
            except TimeoutError:
                self._log.warning("rescue_round_cut", sessions=len(theirs))
