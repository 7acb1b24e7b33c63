"""A job on a Ray cluster of two nodes: roles placed on the nodes the resources file names, same result as one.

Two ``ray start`` nodes on this machine (tests/integration/local_ray_cluster.py), each with its own CPU count and
a custom resource (``node_head`` / ``node_worker``) that the resources file's ``resources:`` pins roles to, and
that the Ray state API reports per node, so where each actor ran is observable. CAID runs twice on the same
cluster: trainer ranks on the worker node, engine, scorer and coordinator on the head — every iteration's
weight sync goes from one node to the other — and then every role on the worker node. Both runs must agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from local_ray_cluster import LocalRayCluster
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAID = [
    "algorithm=caid",
    "caid.iterations=2",
    "caid.num_prompts=8",
    "caid.samples_per_prompt=4",
    "dual.rule=projected",
    "dual.lr=0.5",
]
ROLE_OF = {"TrainerRank": "trainer", "VLLMGenerator": "generator", "SequenceScorer": "scorer"}
ROLE_OF["DualCoordinator"] = "coordinator"


def resources_file(path: Path, trainer_node: str, other_node: str) -> Path:
    """The test topology (2 ranks, 1 engine, 1 scorer), trainer ranks pinned to one node, the rest to another."""
    pin = lambda node: {"resources": {node: 1}}  # noqa: E731
    roles = {
        "trainer": {"count": 2, "cpus": 1} | pin(trainer_node),
        "generator": {"count": 1, "cpus": 1} | pin(other_node),
        "scorer": {"count": 1, "cpus": 0.5} | pin(other_node),
        "coordinator": {"count": 1, "cpus": 0.1} | pin(other_node),
    }
    path.write_text(yaml.safe_dump({"strategy": "PACK", "roles": roles}))
    return path


def run(cluster: LocalRayCluster, job_id: str, out: Path, placement: Path) -> dict:
    done = cluster.job(
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--",
        "ray-align",
        "run",
        "tests/base_job.yaml",
        *CAID,
        f"placement.file={placement}",
        f"output_dir={out}",
        cwd=ROOT,
        timeout_s=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def placed_roles(cluster: LocalRayCluster, seen: set[str]) -> dict[str, set[str]]:
    """Role → the custom node resources of the nodes its actors ran on, for actors not in ``seen`` (added)."""
    from ray.util.state import list_actors, list_nodes

    label = {
        n.node_id: next(k for k in n.resources_total if k.startswith("node_"))
        for n in list_nodes(address=cluster.dashboard, detail=True)
    }
    where: dict[str, set[str]] = {}
    for actor in list_actors(address=cluster.dashboard, limit=1000, detail=True):
        if actor.actor_id in seen or actor.class_name not in ROLE_OF:
            continue
        seen.add(actor.actor_id)
        where.setdefault(ROLE_OF[actor.class_name], set()).add(label[actor.node_id])
    return where


def test_caid_on_two_nodes_places_roles_and_matches_one_node(tmp_path):
    cluster = LocalRayCluster()
    seen: set[str] = set()
    try:
        cluster.start_head(num_cpus=2, resources={"node_head": 100})
        cluster.add_worker(num_cpus=4, resources={"node_worker": 100})
        spread = resources_file(tmp_path / "two_nodes.yaml", "node_worker", "node_head")
        two = run(cluster, "two-nodes", tmp_path / "two", spread)
        assert placed_roles(cluster, seen) == {
            "trainer": {"node_worker"},
            "generator": {"node_head"},
            "scorer": {"node_head"},
            "coordinator": {"node_head"},
        }
        packed = resources_file(tmp_path / "one_node.yaml", "node_worker", "node_worker")
        one = run(cluster, "one-node", tmp_path / "one", packed)
        assert set().union(*placed_roles(cluster, seen).values()) == {"node_worker"}
    finally:
        cluster.stop()
    assert not cluster.processes()

    assert len(two["iterations"]) == len(one["iterations"]) == 2
    for a, b in zip(two["iterations"], one["iterations"]):
        for key in ("lambda", "slack", "mean_reward", "next_lambda"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert two["lambda"] == pytest.approx(one["lambda"], rel=1e-6)
    weights = [load_file(Path(r["checkpoint"]) / "model.safetensors") for r in (two, one)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-5, atol=1e-6)
