"""``forge bench``: run the suite, print the table, write the JSON and the chart."""

from __future__ import annotations

import os
import sys

from . import header as machine
from . import report
from .options import WEIGHTS_MAX_REPEATS, Options, format_size
from .suite import run


def main(options: Options, json_path: str | None = None, plot_path: str | None = None,
         compare_path: str | None = None) -> int:
    old = report.load(compare_path) if compare_path else None  # fail before the long run
    about = machine.collect()
    print(f"forge bench on {about['host']} ({about['cores']} cores, load "
          f"{about['load_avg_1m']:.1f}), commit {about['commit']}", flush=True)
    weights = (f"; weight sync of {format_size(options.weights_bytes)} to 2 replicas, "
               f"{min(options.repeat, WEIGHTS_MAX_REPEATS)} repeats"
               if "weights" in options.sections else "")
    print(f"running: transports {', '.join(options.transports) or '-'}; sections "
          f"{', '.join(options.sections)}; {options.repeat} repeats{weights}"
          f"{' (quick)' if options.quick else ''}", flush=True)
    result = run(options)
    about["load_avg_1m_end"] = os.getloadavg()[0]
    about["gpus"] = about["gpus"] or machine.gpus()  # torch is loaded by now, if it ran
    print()
    print(report.table(result, about, old))
    if json_path:
        report.save(json_path, report.to_json(result, about, options.to_json()))
        print(f"wrote {json_path}")
    if plot_path:
        from . import plot

        plot.save(result.figures, plot_path,
                  f"forge bench, {about['commit']}: {about['cpu']}, {about['cores']} cores, "
                  f"load {about['load_avg_1m']:.1f}-{about['load_avg_1m_end']:.1f}")
        print(f"wrote {plot_path}")
    sys.stdout.flush()
    return 0
