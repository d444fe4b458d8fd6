"""Prometheus metrics (the prometheus-client library): counters fed as things happen, gauges
read from the actors when /metrics is scraped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.sessions_started = Counter(
            "sumo_sessions_started_total", "Sessions admitted to run", registry=self.registry
        )
        self.sessions_finished = Counter(
            "sumo_sessions_finished_total",
            "Sessions that ended, by final status",
            ["status"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "sumo_writer_batch_seconds",
            "Time to commit one writer batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.map_relays = Gauge(
            "sumo_map_relays",
            "Live maps relayed from the node that runs their session",
            registry=self.registry,
        )
        self._live = _Live()
        self.registry.register(self._live)

    def bind(self, *, supervisor: Any, writer: Any, ports_total: int, loop_monitor: Any) -> None:
        self._live.supervisor = supervisor
        self._live.writer = writer
        self._live.ports_total = ports_total
        self._live.loop_monitor = loop_monitor

    def render(self, sessions_by_status: dict[str, int], sumo_children: int) -> bytes:
        self._live.sessions_by_status = sessions_by_status
        self._live.sumo_children = sumo_children
        return generate_latest(self.registry)


class _Live(Collector):
    """Values read from the actors at scrape time."""

    def __init__(self) -> None:
        self.supervisor: Any = None
        self.writer: Any = None
        self.loop_monitor: Any = None
        self.ports_total = 0
        self.sessions_by_status: dict[str, int] = {}
        self.sumo_children = 0

    def collect(self) -> Iterator[Any]:
        by_status = GaugeMetricFamily(
            "sumo_sessions", "Sessions in the database, by status", labels=["status"]
        )
        for status, n in sorted(self.sessions_by_status.items()):
            by_status.add_metric([status], n)
        yield by_status
        if self.supervisor is None:
            return
        leased = self.supervisor.ports_leased
        yield GaugeMetricFamily("sumo_ports_leased", "TraCI ports leased", value=leased)
        yield GaugeMetricFamily(
            "sumo_ports_free", "TraCI ports not leased", value=self.ports_total - leased
        )
        yield GaugeMetricFamily(
            "sumo_queue_depth", "Sessions waiting to run", value=self.supervisor.queued_count
        )
        yield GaugeMetricFamily(
            "sumo_sessions_running", "Sessions running now", value=self.supervisor.running_count
        )
        yield GaugeMetricFamily(
            "sumo_map_watchers",
            "Live maps open on the sessions this node runs",
            value=self.supervisor.map_watchers,
        )
        yield GaugeMetricFamily(
            "sumo_writer_queue_depth", "Items waiting in the writer", value=self.writer.queued
        )
        yield CounterMetricFamily(
            "sumo_writer_rows", "Rows committed by the writer", value=self.writer.stats.rows_written
        )
        yield CounterMetricFamily(
            "sumo_writer_retries", "Batches retried", value=self.writer.stats.retries
        )
        lags = list(self.loop_monitor.lags)
        yield GaugeMetricFamily(
            "sumo_event_loop_lag_seconds", "Latest event-loop lag", value=lags[-1] if lags else 0.0
        )
        ordered = sorted(lags)
        yield GaugeMetricFamily(
            "sumo_event_loop_lag_p99_seconds",
            "99th percentile of event-loop lag in the last minute",
            value=ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
        )
        yield GaugeMetricFamily(
            "sumo_event_loop_lag_max_seconds",
            "Largest event-loop lag in the last minute",
            value=max(lags, default=0.0),
        )
        yield GaugeMetricFamily(
            "sumo_child_processes", "SUMO processes alive", value=self.sumo_children
        )


def count_sumo_children() -> int:
    """SUMO processes under the daemon (blocking: it reads /proc)."""
    n = 0
    for child in psutil.Process().children(recursive=True):
        try:
            n += child.name().startswith("sumo")
        except psutil.Error:
            pass  # ended while we looked
    return n
