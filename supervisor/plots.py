"""Charts of a session's samples, as SVG (matplotlib's object API: no pyplot global state, so it
is safe in a worker thread)."""

from __future__ import annotations

import io
from collections.abc import Sequence


def time_series(
    times: Sequence[float], values: Sequence[float], *, title: str, ylabel: str
) -> bytes:
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasSVG(fig)
    ax = fig.add_subplot()
    ax.plot(list(times), list(values), linewidth=1.2)
    ax.set_xlabel("simulation time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if not times:
        ax.text(0.5, 0.5, "no samples yet", ha="center", va="center", transform=ax.transAxes)
    out = io.BytesIO()
    fig.savefig(out, format="svg")
    return out.getvalue()
