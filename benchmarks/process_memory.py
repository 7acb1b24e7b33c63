"""Peak memory of a child process and everything it starts (Ray's head processes and actors included).

Two sums over the process tree: RSS, sampled every 0.1 s (cheap), and PSS, sampled every second, which
counts pages shared between processes (torch's libraries, mapped by every Ray worker) once where a sum of
RSS counts them in every process. Used by benchmarks/bench_dpo.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import time


def tree_rss(proc) -> int:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process may end while we look
            total += p.memory_info().rss
    return total


def tree_pss(proc) -> dict[str, int]:
    """PSS per process of the tree, by "name pid"."""
    import psutil

    out = {}
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            out[f"{p.name()} {p.pid}"] = p.memory_full_info().pss
    return out


def wait_with_peaks(child: subprocess.Popen) -> dict:
    """Wait for ``child``; its tree's peak RSS sum, peak PSS sum (GB) and the PSS of each process then."""
    import psutil

    proc, peak, peak_pss, tick = psutil.Process(child.pid), 0, {}, 0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        if tick % 10 == 0:  # PSS reads smaps (~3 ms a process): once a second, the plateau lasts a step
            peak_pss = max(peak_pss, tree_pss(proc), key=lambda d: sum(d.values()))
        tick += 1
        time.sleep(0.1)
    by_process = sorted(peak_pss.items(), key=lambda kv: -kv[1])
    return {
        "peak_rss_gb": peak / 1e9,
        "peak_pss_gb": sum(peak_pss.values()) / 1e9,
        "pss_by_process_gb": {k: round(v / 1e9, 3) for k, v in by_process},
    }
