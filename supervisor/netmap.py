"""The map's network: a template version's net geometry (actors/net_geometry.py), parsed once
on a check slot's thread and kept, encoded, per version (a version never changes; its sha256
is part of the key, so a name reused after a delete never gets the old one's map)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import asyncpg

from actors import net_geometry, scenario
from actors.errors import InvalidTemplate, TemplateNotFound
from supervisor import db
from supervisor.jsonio import encode

CACHED_NETS = 16

Key = tuple[str, int, str]


class NetMaps:
    """The encoded geometry of the last CACHED_NETS versions asked for. Two requests for one
    version at once share one parse."""

    def __init__(self, pool: asyncpg.Pool, slots: scenario.CheckSlots, max_inflated: int) -> None:
        self._pool = pool
        self._slots = slots
        self._max_inflated = max_inflated
        self._cache: OrderedDict[Key, asyncio.Future[bytes]] = OrderedDict()

    async def geometry(self, name: str, version: int) -> bytes:
        row = await db.resolve_template_version(self._pool, name, version)
        if row is None or row["version"] != version:
            raise TemplateNotFound(f"no version {version} of {name!r}", template=name)
        key = (name, version, row["sha256"])
        future = self._cache.get(key)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.get_running_loop().create_future()
            self._cache[key] = future
            while len(self._cache) > CACHED_NETS:
                self._cache.popitem(last=False)
            try:
                future.set_result(await self._build(name, version, row["config_path"]))
            except BaseException as exc:
                self._cache.pop(key, None)
                future.set_exception(exc)
                future.exception()  # retrieved: the caller gets it raised below
                raise
        self._cache.move_to_end(key)
        return await asyncio.shield(future)

    async def _build(self, name: str, version: int, config_path: str) -> bytes:
        config = await db.template_file(self._pool, name, version, config_path)
        if config is None:
            raise InvalidTemplate(f"version {version} of {name!r} has no config {config_path!r}")
        net_file = net_geometry.net_path(config, config_path)
        data = await db.template_file(self._pool, name, version, net_file)
        if data is None:
            raise InvalidTemplate(f"version {version} of {name!r} has no net {net_file!r}")

        def parse() -> bytes:
            return encode(net_geometry.read_geometry(net_file, data, self._max_inflated))

        return await self._slots.run(parse)
