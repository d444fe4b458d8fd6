"""sumo-supervisor: the daemon (config, wiring, API, CLI, database access), and its Python client:

    from supervisor import Client, AsyncClient, to_dataframe

The client is imported on first use: the daemon's own modules never load it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.client import AsyncClient, Client, to_dataframe

__all__ = ["AsyncClient", "Client", "to_dataframe"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from supervisor import client

        return getattr(client, name)
    raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
