"""The Python client of the daemon's API: `Client` (blocking, for scripts and notebooks) and
`AsyncClient` (asyncio). Both have the same methods, with the same arguments and answers
(typed rows, supervisor/client_models.py) and the same errors (supervisor/client_errors.py).

    from supervisor import Client

    with Client("http://127.0.0.1:8750", token="sst_...") as client:
        session = client.create_session("city", seed=42, end=3600)
        done = client.wait_session(session.id, timeout=600)
        frame = client.samples_df(done.id)

Each method is written once, as a plan (supervisor/client_plans.py) that says what to ask and
how to read the answer; the two classes only perform its steps, each with its own httpx client.
The CLI uses `Client` too."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Generic, ParamSpec, Self, TypeVar, overload

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError, aconnect_sse, connect_sse

from supervisor import client_plans as plans
from supervisor.client_errors import (
    ClientError,
    ConnectionLost,
    DaemonUnreachable,
    RequestTimeout,
    api_error,
)
from supervisor.client_models import to_dataframe
from supervisor.client_plans import (
    Blocking,
    Call,
    Connect,
    Download,
    Emit,
    NextEvent,
    Plan,
    Sleep,
    Step,
    StreamPlan,
)

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "to_dataframe"]

DEFAULT_URL = "http://127.0.0.1:8750"
P = ParamSpec("P")
T = TypeVar("T")


# ---- what both clients share -------------------------------------------------------------------


def _answer(response: httpx.Response) -> Any:
    """The JSON body of a read answer; `ApiError` (its subclass for the status) for an error."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise api_error(response.status_code, body, response.text, response.headers)
    return body


@contextlib.contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    """httpx's errors as the client's own."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise DaemonUnreachable(url, str(exc) or type(exc).__name__) from exc
    except httpx.TimeoutException as exc:
        raise RequestTimeout(f"the daemon at {url} did not answer in time") from exc
    except (httpx.TransportError, httpx.DecodingError, SSEError) as exc:
        raise ConnectionLost(f"talking to {url}: {exc or type(exc).__name__}") from exc


def _stream_request(step: Connect) -> dict[str, Any]:
    headers = {"Last-Event-ID": step.last_event_id} if step.last_event_id else {}
    # The connection may idle between events: only reads are bounded, by the pings.
    timeout = httpx.Timeout(30.0, read=step.read_timeout_s)
    return {"params": step.params, "headers": headers, "timeout": timeout}


def _request(step: Call) -> dict[str, Any]:
    return {"params": step.params, "json": step.json, "data": step.form, "files": step.files}


class _Runner(Generic[T]):
    """Advances a plan: hands it the last step's answer, or throws its error in."""

    def __init__(self, plan: plans.Plan[T] | StreamPlan[Any]) -> None:
        self._plan = plan
        self._answer: Any = None
        self._error: ClientError | None = None
        self.result: Any = None

    def next(self) -> Step | Emit[Any] | None:
        """The plan's next step; None when it is done (its answer in `result`)."""
        try:
            if self._error is not None:
                error, self._error = self._error, None
                return self._plan.throw(error)
            return self._plan.send(self._answer)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def answered(self, answer: Any) -> None:
        self._answer = answer

    def failed(self, error: ClientError) -> None:
        self._answer, self._error = None, error


def _settings(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    url = (url or os.environ.get("SUMO_SUPERVISOR_URL") or DEFAULT_URL).rstrip("/")
    token = token or os.environ.get("SUMO_SUPERVISOR_TOKEN")
    return url, ({"Authorization": f"Bearer {token}"} if token else {})


class _Endpoint(Generic[P, T]):
    """A method of both clients, made from its plan: `Client` answers with the plan's result,
    `AsyncClient` with a coroutine of it."""

    def __init__(self, plan: Callable[P, Plan[T]]) -> None:
        self._plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: Client, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, obj: AsyncClient, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: Client | AsyncClient | None, owner: type[Any]) -> Any:
        return self if obj is None else obj._method(self._plan)


class _Stream(Generic[P, T]):
    """A live stream of both clients: an iterator for `Client`, an async one for
    `AsyncClient`."""

    def __init__(self, plan: Callable[P, StreamPlan[T]]) -> None:
        self._plan = plan
        self.__doc__ = plan.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: Client, owner: type[Any]) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(self, obj: AsyncClient, owner: type[Any]) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, obj: Client | AsyncClient | None, owner: type[Any]) -> Any:
        return self if obj is None else obj._iterator(self._plan)


class _Api:
    """The methods both clients have (each plan's docstring says what it does)."""

    url: str
    has_token: bool

    # templates
    add_template = _Endpoint(plans.add_template)
    upload_template = _Endpoint(plans.upload_template)
    list_templates = _Endpoint(plans.list_templates)
    get_template = _Endpoint(plans.get_template)
    delete_template = _Endpoint(plans.delete_template)
    delete_template_version = _Endpoint(plans.delete_template_version)
    # sessions
    create_session = _Endpoint(plans.create_session)
    get_session = _Endpoint(plans.get_session)
    list_sessions = _Endpoint(plans.list_sessions)
    wait_session = _Endpoint(plans.wait_session)
    stop_session = _Endpoint(plans.stop_session)
    pause_session = _Endpoint(plans.pause_session)
    resume_session = _Endpoint(plans.resume_session)
    step_session = _Endpoint(plans.step_session)
    send_commands = _Endpoint(plans.send_commands)
    get_commands = _Endpoint(plans.get_commands)
    session_logs = _Endpoint(plans.session_logs)
    session_events = _Endpoint(plans.session_events)
    delete_session = _Endpoint(plans.delete_session)
    # results
    samples = _Endpoint(plans.samples)
    samples_df = _Endpoint(plans.samples_df)
    summary = _Endpoint(plans.summary)
    summaries_df = _Endpoint(plans.summaries_df)
    compare = _Endpoint(plans.compare)
    export_csv = _Endpoint(plans.export_csv)
    # sweeps
    create_sweep = _Endpoint(plans.create_sweep)
    get_sweep = _Endpoint(plans.get_sweep)
    wait_sweep = _Endpoint(plans.wait_sweep)
    sweep_samples_df = _Endpoint(plans.sweep_samples_df)
    # live streams
    stream_session = _Stream(plans.stream_session)
    stream_sessions = _Stream(plans.stream_sessions)
    # the daemon, and any other route
    health = _Endpoint(plans.health)
    nodes = _Endpoint(plans.nodes)
    storage = _Endpoint(plans.storage)
    drain = _Endpoint(plans.drain)
    request = _Endpoint(plans.request)


# ---- blocking ----------------------------------------------------------------------------------


class _SyncSteps:
    """Performs one plan's steps with a blocking httpx client; owns its open stream."""

    def __init__(self, http: httpx.Client, url: str) -> None:
        self._http = http
        self._url = url
        self._stream = contextlib.ExitStack()
        self._events: Iterator[ServerSentEvent] | None = None

    def perform(self, step: Step) -> Any:
        with _transport_errors(self._url):
            match step:
                case Call():
                    return _answer(self._http.request(step.method, step.path, **_request(step)))
                case Blocking():
                    return step.fn()
                case Sleep():
                    time.sleep(step.seconds)
                    return None
                case Download():
                    return self._download(step)
                case Connect():
                    return self._connect(step)
                case NextEvent():
                    assert self._events is not None, "NextEvent before Connect"
                    return next(self._events, None)

    def _download(self, step: Download) -> int:
        written = 0
        with self._http.stream("GET", step.path) as response:
            if response.status_code >= 400:
                response.read()
                _answer(response)
            for chunk in response.iter_bytes():
                step.out.write(chunk)
                written += len(chunk)
        return written

    def _connect(self, step: Connect) -> None:
        self.close()
        source: EventSource = self._stream.enter_context(
            connect_sse(self._http, "GET", step.path, **_stream_request(step))
        )
        if source.response.status_code >= 400:
            source.response.read()
            _answer(source.response)
        self._events = source.iter_sse()

    def close(self) -> None:
        self._events = None
        self._stream.close()


class Client(_Api):
    """A blocking client of the daemon at `url` (default `$SUMO_SUPERVISOR_URL`, else
    http://127.0.0.1:8750), sending `token` (default `$SUMO_SUPERVISOR_TOKEN`). Each request
    waits up to `timeout` s for its answer. Close it, or use it in a `with` block."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0
    ) -> None:
        self.url, headers = _settings(url, token)
        self.has_token = bool(headers)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _method(self, plan: Callable[P, Plan[T]]) -> Callable[P, T]:
        @functools.wraps(plan)
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            runner = _Runner(plan(*args, **kwargs))
            for item in self._drive(runner):
                raise TypeError(f"a call's plan emitted {item!r}")
            result: T = runner.result
            return result

        return method

    def _iterator(self, plan: Callable[P, StreamPlan[T]]) -> Callable[P, Iterator[T]]:
        @functools.wraps(plan)
        def iterate(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            return self._drive(_Runner(plan(*args, **kwargs)))

        return iterate

    def _drive(self, runner: _Runner[Any]) -> Iterator[Any]:
        """Perform the plan's steps, giving what it emits; its result ends up in the runner."""
        steps = _SyncSteps(self._http, self.url)
        try:
            while (step := runner.next()) is not None:
                if isinstance(step, Emit):
                    yield step.item
                    runner.answered(None)
                    continue
                try:
                    runner.answered(steps.perform(step))
                except ClientError as exc:
                    runner.failed(exc)
        finally:
            steps.close()


# ---- asyncio -----------------------------------------------------------------------------------


class _AsyncSteps:
    """Performs one plan's steps with an asyncio httpx client; owns its open stream."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._stream = contextlib.AsyncExitStack()
        self._events: AsyncIterator[ServerSentEvent] | None = None

    async def perform(self, step: Step) -> Any:
        with _transport_errors(self._url):
            match step:
                case Call():
                    response = await self._http.request(step.method, step.path, **_request(step))
                    return _answer(response)
                case Blocking():
                    return await asyncio.to_thread(step.fn)
                case Sleep():
                    await asyncio.sleep(step.seconds)
                    return None
                case Download():
                    return await self._download(step)
                case Connect():
                    return await self._connect(step)
                case NextEvent():
                    assert self._events is not None, "NextEvent before Connect"
                    return await anext(self._events, None)

    async def _download(self, step: Download) -> int:
        written = 0
        async with self._http.stream("GET", step.path) as response:
            if response.status_code >= 400:
                await response.aread()
                _answer(response)
            async for chunk in response.aiter_bytes():
                # A file's write may block: off the loop.
                await asyncio.to_thread(step.out.write, chunk)
                written += len(chunk)
        return written

    async def _connect(self, step: Connect) -> None:
        await self.aclose()
        source: EventSource = await self._stream.enter_async_context(
            aconnect_sse(self._http, "GET", step.path, **_stream_request(step))
        )
        if source.response.status_code >= 400:
            await source.response.aread()
            _answer(source.response)
        self._events = source.aiter_sse()

    async def aclose(self) -> None:
        self._events = None
        await self._stream.aclose()


class AsyncClient(_Api):
    """The asyncio client: `Client`'s methods, as coroutines (and async iterators for the
    streams). Close it with `await client.aclose()`, or use it in an `async with` block."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *, timeout: float = 60.0
    ) -> None:
        self.url, headers = _settings(url, token)
        self.has_token = bool(headers)
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _method(self, plan: Callable[P, Plan[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(plan)
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            runner = _Runner(plan(*args, **kwargs))
            async for item in self._drive(runner):
                raise TypeError(f"a call's plan emitted {item!r}")
            result: T = runner.result
            return result

        return method

    def _iterator(self, plan: Callable[P, StreamPlan[T]]) -> Callable[P, AsyncIterator[T]]:
        @functools.wraps(plan)
        def iterate(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[T]:
            return self._drive(_Runner(plan(*args, **kwargs)))

        return iterate

    async def _drive(self, runner: _Runner[Any]) -> AsyncIterator[Any]:
        """Perform the plan's steps, giving what it emits; its result ends up in the runner."""
        steps = _AsyncSteps(self._http, self.url)
        try:
            while (step := runner.next()) is not None:
                if isinstance(step, Emit):
                    yield step.item
                    runner.answered(None)
                    continue
                try:
                    runner.answered(await steps.perform(step))
                except ClientError as exc:
                    runner.failed(exc)
        finally:
            await steps.aclose()
