"""The chart: latency and bandwidth per transport, each bar beside its floor.

Bars are medians with min..max whiskers; a black tick on a bar is the floor measured in the
same run, so the gap between bar and tick is what Forge costs over the bare machine.
"""

from __future__ import annotations

from pathlib import Path

from .figures import Figure
from .report import ordered

LATENCY = ("latency", "mesh")           # microseconds, lower is better
BANDWIDTH = ("tensor", "weights")       # GB/s, higher is better


def save(figures: list[Figure], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    panels = [("round trip (us), lower is better",
               [f for f in figures if f.section in LATENCY and f.unit == "us"]),
              ("bandwidth (GB/s), higher is better",
               [f for f in figures if f.section in BANDWIDTH and f.unit == "GB/s"])]
    panels = [(label, ordered(chosen)) for label, chosen in panels if chosen]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(11, 4.2 * max(1, len(panels))),
                             squeeze=False)
    for ax, (label, chosen) in zip(axes[:, 0], panels):
        _grouped_bars(ax, chosen, label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped_bars(ax, figures: list[Figure], label: str) -> None:
    """One group per figure name, one bar per transport in it."""
    groups = list(dict.fromkeys(f.name for f in figures))
    transports = list(dict.fromkeys(f.transport for f in figures))
    width = 0.8 / len(transports)
    colors = {t: f"C{i}" for i, t in enumerate(transports)}
    for f in figures:
        offset = transports.index(f.transport) - (len(transports) - 1) / 2
        x = groups.index(f.name) + offset * width
        spread = [[f.median - f.low], [f.high - f.median]]
        ax.bar(x, f.median, width * 0.9, color=colors[f.transport], yerr=spread, capsize=2,
               error_kw={"linewidth": 0.8}, label=f.transport)
        if f.floor_median is not None:
            ax.hlines(f.floor_median, x - width * 0.45, x + width * 0.45, colors="black",
                      linewidth=2, label="floor (same run)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left",
              bbox_to_anchor=(1.0, 1.0))  # beside the axes: never over a bar or a floor
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_yscale("log")  # a p99 or a memcpy floor is ten times the rest: keep all readable
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)
