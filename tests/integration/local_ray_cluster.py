"""A real Ray cluster on this machine for tests: ``ray start`` nodes on 127.0.0.1 and ``ray job`` commands.

Every node gets its own temp dir (under /tmp: Ray's socket paths must stay short) and explicitly chosen free
ports, so it never collides with the tests' session instance (``ray.init(address="local")``) or with another
Ray on the machine. Nodes run as ``ray start --block`` children of the test, and :meth:`LocalRayCluster.stop`
ends exactly the processes they started, by process id (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ENV = {
    "RAY_AUTH_MODE": "disabled",  # Ray 2.60 would otherwise require a token for every command
    # "0" (the tests' default, scripts/env.sh) refuses worker nodes; --node-ip-address keeps everything on loopback
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now. The sockets stay open until all are bound: ports taken one at a time
    can come back twice (the kernel hands out a just-released port again), and Ray refuses a node whose
    components share a port."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


PORT_NAMES = [
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
]


class LocalRayCluster:
    """A head and any number of worker nodes; use as a context manager so ``stop`` always runs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ra-", dir="/tmp"))
        self.env = os.environ | ENV
        self.nodes: list[subprocess.Popen] = []
        self._used: set[int] = set()
        self.gcs_port, self.dashboard_port = self._free_ports(2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _free_ports(self, count: int) -> list[int]:
        """Free ports none of this cluster's nodes was given before."""
        while True:
            ports = free_ports(count)
            if not self._used.intersection(ports):
                self._used.update(ports)
                return ports

    def _port_args(self, head: bool) -> list[str]:
        """Every port a node opens, chosen free now; workers bind random ports (0)."""
        names = PORT_NAMES + (["ray-client-server-port"] if head else [])
        ports = self._free_ports(len(names))
        return [f"--{n}={p}" for n, p in zip(names, ports, strict=True)] + [
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _start(self, args: list[str], num_cpus: int, resources: dict[str, float]) -> None:
        name = f"node{len(self.nodes)}"
        cmd = [
            "ray",
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.root / name}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            "--disable-usage-stats",
            *args,
        ]
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        self.nodes.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env))
        self.wait_for_nodes(len(self.nodes))

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> None:
        args = [
            "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
        ]
        self._start(args + self._port_args(head=True), num_cpus, resources)

    def add_worker(self, num_cpus: int, resources: dict[str, float]) -> None:
        self._start([f"--address={self.address}", *self._port_args(head=False)], num_cpus, resources)

    def wait_for_nodes(self, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Until ``count`` nodes are alive (the dashboard answers once the head is up)."""
        from ray.util.state import list_nodes

        deadline = time.time() + timeout_s
        while True:
            for node in self.nodes:
                if node.poll() is not None:
                    log = (self.root / f"node{self.nodes.index(node)}.log").read_text()[-3000:]
                    raise RuntimeError(f"ray start exited with {node.returncode}:\n{log}")
            try:
                alive = [n for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"]
                if len(alive) >= count:
                    return [n.__dict__ for n in alive]
            except Exception:  # the dashboard is not up yet
                pass
            if time.time() > deadline:
                raise TimeoutError(f"{count} Ray nodes not alive after {timeout_s} s (logs in {self.root})")
            time.sleep(1.0)

    def job(
        self, command: str, *args: str, cwd: str | Path | None = None, timeout_s: float = 600.0
    ) -> subprocess.CompletedProcess:
        """``ray job COMMAND --address DASHBOARD ARGS...`` (submit, status, logs, stop), run in ``cwd``."""
        return subprocess.run(
            ["ray", "job", command, "--address", self.dashboard, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def status(self, job_id: str) -> str:
        """The job's status name (SUCCEEDED, FAILED, ...), through the job SDK (the CLI's wording varies)."""
        from ray.job_submission import JobSubmissionClient

        return str(JobSubmissionClient(self.dashboard).get_job_status(job_id).value)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: the nodes' process trees and anything naming our temp dir."""
        found: dict[int, psutil.Process] = {}
        for node in self.nodes:
            try:
                root = psutil.Process(node.pid)
                for proc in [root, *root.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.root) in part for part in proc.info["cmdline"] or []):
                found[proc.pid] = proc
        return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process of the cluster, SIGKILL what is left after ``grace_s``; then remove the temp dir."""
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive + self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        for node in self.nodes:
            node.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
