"""Progress people can watch: bars on long loops, and one plain line per step for logs that are not a terminal."""

from __future__ import annotations

import sys
from typing import Any


def bar(total: int, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr (updates at most once a second, so `ray job logs` stays readable)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True, leave=False
    )


def step_line(stage: str, step: int, total: int, stats: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``stage step 12/40 · loss 0.693 · acc 0.50``: the keys that are present, 3 significant digits."""
    parts = [f"{stage} step {step}/{total}"]
    for key in keys:
        value = stats.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.3g}")
    return " · ".join(parts)
