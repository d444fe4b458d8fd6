"""A session's summary: SUMO's own end-of-run statistics (`--statistic-output`), under the names
the API has always used, plus what SUMO does not give (p95 duration, throughput).

SUMO's figures are taken as SUMO printed them, not recomputed: its definitions (the trip
averages over departed vehicles only, unfinished ones when SUMO writes them, persons apart) then
hold on every scenario, whether or not the session recorded trips. A session without them (its
SUMO was killed, or it ended before they were kept) falls back to the samples and the recorded
trips (of departed vehicles), and says so in `source`.
"""

from __future__ import annotations

from typing import Any

# Summary name -> (SUMO element, attribute). Each is SUMO's number as SUMO wrote it.
SUMO_FIGURES: dict[str, tuple[str, str]] = {
    "loaded": ("vehicles", "loaded"),
    "inserted": ("vehicles", "inserted"),
    "running": ("vehicles", "running"),
    "waiting": ("vehicles", "waiting"),
    "trips": ("vehicleTripStatistics", "count"),
    "mean_route_length": ("vehicleTripStatistics", "routeLength"),
    "mean_speed": ("vehicleTripStatistics", "speed"),
    "mean_duration": ("vehicleTripStatistics", "duration"),
    "mean_waiting_time": ("vehicleTripStatistics", "waitingTime"),
    "mean_time_loss": ("vehicleTripStatistics", "timeLoss"),
    "mean_depart_delay": ("vehicleTripStatistics", "departDelay"),
    "mean_depart_delay_waiting": ("vehicleTripStatistics", "departDelayWaiting"),
    "total_travel_time": ("vehicleTripStatistics", "totalTravelTime"),
    "total_depart_delay": ("vehicleTripStatistics", "totalDepartDelay"),
    "teleports": ("teleports", "total"),
    "teleports_jam": ("teleports", "jam"),
    "teleports_yield": ("teleports", "yield"),
    "teleports_wrong_lane": ("teleports", "wrongLane"),
    "collisions": ("safety", "collisions"),
    "emergency_stops": ("safety", "emergencyStops"),
    "emergency_braking": ("safety", "emergencyBraking"),
    "persons_loaded": ("persons", "loaded"),
    "persons_running": ("persons", "running"),
    "persons_jammed": ("persons", "jammed"),
    "person_teleports": ("personTeleports", "total"),
    "walks": ("pedestrianStatistics", "number"),
    "mean_walk_route_length": ("pedestrianStatistics", "routeLength"),
    "mean_walk_duration": ("pedestrianStatistics", "duration"),
    "mean_walk_time_loss": ("pedestrianStatistics", "timeLoss"),
    "rides": ("rideStatistics", "number"),
    "mean_ride_waiting_time": ("rideStatistics", "waitingTime"),
    "mean_ride_route_length": ("rideStatistics", "routeLength"),
    "mean_ride_duration": ("rideStatistics", "duration"),
    "transports": ("transportStatistics", "number"),
}
# What the samples and recorded trips give when SUMO's statistics are missing.
_FALLBACK = (
    "inserted",
    "arrived",
    "running",
    "teleports",
    "trips",
    "mean_duration",
    "mean_waiting_time",
    "mean_time_loss",
    "mean_route_length",
    "mean_speed",
    "mean_depart_delay",
    "total_distance",
)
# Every numeric figure of a summary, in order: what compare differences and sweeps aggregate.
FIGURES = (
    "arrived",
    *SUMO_FIGURES,
    "total_distance",
    "p95_duration",
    "sim_seconds",
    "throughput_per_hour",
)


def build(session: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """The summary of `session` from db.session_summary's `figures`."""
    stats: dict[str, dict[str, Any]] | None = figures.get("statistics")
    out: dict[str, Any] = dict.fromkeys(FIGURES)
    # Vehicles that ended their trip, from SUMO's per-step summary: not SUMO's `count`, which
    # also counts, with write-unfinished, the vehicles still running at the end.
    out["arrived"] = figures.get("arrived")
    if stats is not None:
        for name, (element, attribute) in SUMO_FIGURES.items():
            out[name] = stats.get(element, {}).get(attribute)
        if out["trips"] is not None and out["mean_route_length"] is not None:
            out["total_distance"] = out["trips"] * out["mean_route_length"]
    else:
        for name in _FALLBACK:
            out[name] = figures.get(name)
    # SUMO has no percentiles: from the recorded trips (of departed vehicles), when recorded.
    out["p95_duration"] = figures.get("p95_duration")
    last = figures.get("last_time") or 0.0
    begin = float(session["request"].get("sumo_options", {}).get("begin", 0.0))
    out["sim_seconds"] = max(0.0, last - begin)
    hours = out["sim_seconds"] / 3600
    arrived = out["arrived"]
    out["throughput_per_hour"] = arrived / hours if hours > 0 and arrived is not None else None
    return {
        "id": session["id"],
        "status": session["status"],
        "label": session["label"],
        "source": "sumo_statistics" if stats is not None else "recorded",
        **out,
        "statistics": stats,
    }


def compare(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """`summaries` side by side, and each one's differences from the first, figure by figure
    (None where either has no such figure)."""
    base = summaries[0]
    differences = [
        {
            "id": s["id"],
            "against": base["id"],
            **{
                k: (s[k] - base[k]) if s[k] is not None and base[k] is not None else None
                for k in FIGURES
            },
        }
        for s in summaries[1:]
    ]
    return {"sessions": summaries, "differences": differences}
