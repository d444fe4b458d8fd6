"""A small HTTP client of the daemon for the CLI (httpx). Errors become one-line `CliError`s."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

DEFAULT_URL = "http://127.0.0.1:8750"


class CliError(Exception):
    """What went wrong, said in one line; the CLI prints it and exits non-zero."""


class Client:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("SUMO_SUPERVISOR_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("SUMO_SUPERVISOR_TOKEN")
        self._has_token = bool(token)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.ConnectError:
            raise CliError(
                f"no daemon answers at {self.url} (start it with `sumo-supervisor serve`,"
                " or give --url)"
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"the daemon at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CliError(f"talking to {self.url}: {exc}") from None

    def _check(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except json.JSONDecodeError:
            body = None
        if response.status_code >= 400:
            message = body.get("error") if isinstance(body, dict) else response.text[:200]
            raise CliError(self._explain(response.status_code, str(message)))
        return body

    def _explain(self, status: int, message: str) -> str:
        if status == 401 and not self._has_token:
            return (
                f"the daemon at {self.url} needs a token: set SUMO_SUPERVISOR_TOKEN (make one with"
                " `sumo-supervisor token create NAME --role operator`)"
            )
        if status == 401:
            return f"the daemon at {self.url} refused SUMO_SUPERVISOR_TOKEN: {message}"
        if status == 403:
            return f"not allowed: {message}"
        return f"{message} (HTTP {status})"

    def get(self, path: str, **params: Any) -> Any:
        with self._errors():
            clean = {k: v for k, v in params.items() if v is not None}
            return self._check(self._http.get(path, params=clean))

    def post(self, path: str, body: Any = None) -> Any:
        with self._errors():
            return self._check(self._http.post(path, json=body))

    def upload(self, name: str, config: str, files: dict[str, Path]) -> Any:
        with self._errors():
            parts = [("file", (rel, path.read_bytes())) for rel, path in files.items()]
            return self._check(
                self._http.post("/v1/templates", data={"name": name, "config": config}, files=parts)
            )

    def download(self, path: str, out: Any) -> int:
        """Stream a CSV export into the binary file `out`; returns the bytes written."""
        written = 0
        with self._errors(), self._http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
                written += len(chunk)
        return written

    def stream(self, session_id: str) -> Iterator[tuple[str, Any]]:
        """The session's live events: ("sample" | "status" | "error", data)."""
        path = f"/v1/sessions/{session_id}/stream"
        # The same client (and its auth header), without a timeout: a stream may idle for long.
        with self._errors(), connect_sse(self._http, "GET", path, timeout=None) as source:
            if source.response.status_code >= 400:
                source.response.read()
                self._check(source.response)
            for event in source.iter_sse():
                yield event.event, json.loads(event.data)
