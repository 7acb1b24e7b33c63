"""An actor's death as one readable sentence: its role, its node, and its own error.

Ray reports a dead actor with a multi-line message (and the driver's traceback around it). The run's user needs
to know which role died, where, and why, in one paragraph; the full traceback is logged at DEBUG.
"""

from __future__ import annotations

import glob
import os
import re

# Actor classes (actors/) by the role they play in a run.
ROLE_OF_CLASS = {
    "VLLMGenerator": "generator (vLLM engine)",
    "HFGenerator": "generator (HF engine)",
    "SequenceScorer": "scorer",
    "FunctionScorer": "scorer",
    "ReferenceScorer": "reference",
    "TrainerRank": "trainer rank",
    "DualCoordinator": "coordinator",
}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def find_actor_death(error: BaseException) -> BaseException | None:
    """The RayActorError behind ``error`` (itself, or in its chain of causes), or None."""
    from ray.exceptions import RayActorError

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, RayActorError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _field(text: str, name: str) -> str | None:
    """``name: value`` (a killed actor's report) or ``name=value`` (a failed constructor's)."""
    match = re.search(rf"\b{name}[:=]\s*([^\s,)]+)", text)
    return match.group(1) if match else None


def _own_error(error: BaseException, text: str) -> str:
    """The actor's own account: its constructor's exception, or how its process ended."""
    if getattr(error, "actor_init_failed", False):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"its constructor raised {lines[-1]}" if lines else "its constructor raised an error"
    detail = re.search(
        r"Worker exit type: (\S+) Worker exit detail: (.*?)(?: Some common causes|$)", text, re.S
    )
    if detail:
        return (
            f"its process ended ({detail.group(1)}: {detail.group(2).strip()}): killed, out of memory, "
            "or crashed"
        )
    # Otherwise (a node that died, an actor that is unavailable): the lines after Ray's fields.
    tail = [line for line in text.splitlines()[1:] if line.strip() and not line[0].isspace()]
    return (" ".join(tail) or text.splitlines()[0] if text else "no reason given")[:400]


def _log_file(pid: str | None) -> str | None:
    """The actor's stderr log on this machine (Ray's session log folder), when there is one."""
    try:
        import ray

        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:  # not connected, or a Ray without this layout: the message does without it
        return None
    found = sorted(glob.glob(os.path.join(logs, f"worker-*-{pid}.err"))) if pid else []
    return found[-1] if found else None


def describe_actor_death(error: BaseException) -> str | None:
    """One paragraph naming the role, the node and the actor's own error; None when no actor died."""
    death = find_actor_death(error)
    if death is None:
        return None
    text = _ANSI.sub("", str(getattr(death, "error_msg", None) or death))
    cls = _field(text, "class_name") or (re.search(r"ray::(\w+)\.", text) or [None, None])[1]
    cls = (cls or "unknown").rsplit(".", 1)[-1]
    role = ROLE_OF_CLASS.get(cls, "actor")
    pid, ip = _field(text, "pid"), _field(text, "ip")
    log = _log_file(pid)
    where = f"on node {ip}" if ip else "on an unknown node"
    message = f"the {role} actor ({cls}, pid {pid or '?'}) {where} died: {_own_error(death, text)}"
    return message + (f"; its log: {log}" if log else "")
