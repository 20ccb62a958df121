"""The table, the JSON file and the comparison with an earlier run."""

from __future__ import annotations

import json
from pathlib import Path

from . import header as header_lines
from .figures import Figure
from .options import SECTIONS, TRANSPORTS, WEIGHT_BACKENDS
from .suite import Result

FORMAT = "forge-bench/1"
SAME = 0.10  # a change within 10% of the old median reads as noise on a shared machine


def ordered(figures: list[Figure]) -> list[Figure]:
    """By section, then figure (in the order measured), then transport."""
    names: dict[str, int] = {}
    for figure in figures:
        names.setdefault(figure.name, len(names))
    transports = {t: i for i, t in enumerate(dict.fromkeys((*TRANSPORTS, *WEIGHT_BACKENDS)))}

    def key(figure: Figure) -> tuple:
        return (SECTIONS.index(figure.section), names[figure.name],
                transports.get(figure.transport, len(transports)), figure.transport)

    return sorted(figures, key=key)


def to_json(result: Result, header: dict, options: dict) -> dict:
    return {"format": FORMAT, "header": header, "options": options,
            "elapsed_s": result.elapsed_s, "skipped": result.skipped,
            "figures": [f.to_json() for f in ordered(result.figures)]}


def save(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load(path: str | Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a `forge bench --json` file ({FORMAT})")
    return data


def changes(figures: list[Figure], old: dict) -> dict[str, str]:
    """Per figure key: new median over the old one, and whether that is better or worse."""
    old_medians = {f["key"]: f["median"] for f in old["figures"]}
    out = {}
    for figure in figures:
        before = old_medians.get(figure.key)
        if not before:
            continue
        ratio = figure.median / before
        gain = ratio if figure.higher_is_better else 1 / ratio
        verdict = "same" if abs(gain - 1) <= SAME else ("better" if gain > 1 else "worse")
        out[figure.key] = f"{ratio:.2f} {verdict}"
    return out


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(result: Result, header: dict, old: dict | None = None) -> str:
    figures = ordered(result.figures)
    versus = changes(figures, old) if old else {}
    columns = ["section", "figure", "transport", "median", "min", "max", "n", "unit", "floor",
               "floor med", "x floor"] + (["new/old"] if old else [])
    rows = []
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        row = [f.section, f.name, f.transport, _num(f.median), _num(f.low), _num(f.high),
               str(f.repeats), f.unit, f.floor or "-", _num(f.floor_median), ratio]
        rows.append(row + ([versus.get(f.key, "-")] if old else []))
    numeric = {"median", "min", "max", "n", "floor med", "x floor"}
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(w) if columns[i] in numeric else cell.ljust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths))).rstrip()

    out = header_lines.lines(header) + [""]
    out += [line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append("")
    out.append("median, min and max are over n repeats (each a percentile or rate over many "
               "calls; for weight sync one publish-and-load step); x floor is median / floor "
               "median: for times the floors a call costs, for rates the share of the floor "
               "reached.")
    if old:
        out.append(f"new/old: this run's median over {old['header'].get('commit', '?')}'s "
                   f"(within {SAME:.0%} reads as same).")
    out += [f"skipped: {reason}" for reason in result.skipped]
    out.append(f"{len(figures)} figures in {result.elapsed_s:.0f} s")
    return "\n".join(out)
