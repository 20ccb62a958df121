"""``forge doctor``: for every process of a client, what each actor is doing now."""

from __future__ import annotations

import time
from typing import Any


def report(collected: dict[str, Any], threshold: float = 5.0) -> str:
    """Readable text: a block per client, a line per proc, the calls running and waiting.

    A call running for ``threshold`` seconds or more is marked STUCK? with the line it is on
    and its stack, innermost frame last."""
    lines: list[str] = []
    if not collected["clients"]:
        return "forge doctor: no Forge client of this user runs on this host"
    for client in collected["clients"]:
        lines.append(f"client pid {client['pid']}" + (f": {client['error']}"
                                                       if "error" in client else ""))
        for service in client.get("services", []):
            states = ", ".join(f"{r['name']} {r['state']} (gen {r['generation']})"
                               for r in service["replicas"])
            lines.append(f"  service {service['name']}: {states}")
        for proc in client.get("procs", []):
            head = (f"  {proc.get('mesh', '?')} rank {proc.get('rank', '?')}: host "
                    f"{proc.get('host', '?')} pid {proc['pid']}")
            if "error" in proc:
                lines.append(f"{head}: {proc['error']}")
                continue
            busy = [a for a in proc["actors"] if a["running"] or a["queued"]]
            lines.append(head + ("" if busy else ": idle"))
            for actor in busy:
                for call in actor["running"]:
                    mark = "STUCK? " if call["seconds"] >= threshold else ""
                    lines.append(f"    {mark}{actor['class']}.{call['endpoint']} (actor "
                                 f"{actor['actor']}) running {call['seconds']:.1f} s since "
                                 f"{time.strftime('%H:%M:%S', time.localtime(call['since']))}"
                                 f", at {call['where']}")
                    if mark:
                        for frame in call["stack"]:
                            lines.append(f"        {frame['file']}:{frame['line']} in "
                                         f"{frame['function']}: {frame['code']}")
                if actor["queued"]:
                    lines.append(f"    waiting on {actor['class']}: {len(actor['queued'])} "
                                 f"call(s): {', '.join(actor['queued'][:10])}")
    return "\n".join(lines)
