"""Resources files become placement-group bundles: counts, colocation shares and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_align.placement import ResourcesFile, load_resources, plan_placement

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"


def test_test_topology_has_one_bundle_per_actor():
    plan = plan_placement(load_resources(CLUSTERS / "local_cpu_2ranks.yaml"))
    assert plan.count("trainer") == 2 and plan.count("generator") == 1 and plan.count("scorer") == 2
    assert len(plan.bundles) == 6
    assert plan.slot("trainer", 1).bundle == 1
    assert all("GPU" not in b for b in plan.bundles)


def test_colocated_roles_share_bundles_and_split_the_gpu():
    plan = plan_placement(load_resources(CLUSTERS / "gpu_colocated.yaml"))
    for i in range(4):
        trainer, engine = plan.slot("trainer", i), plan.slot("generator", i)
        assert trainer.bundle == engine.bundle == i
        assert trainer.gpus == engine.gpus == 0.5  # one GPU in the bundle, half each
        assert plan.bundles[i] == {"CPU": 6.0, "GPU": 1.0}  # CPUs add up: 4 + 2


def test_overrides_from_the_job_config():
    resources = load_resources(CLUSTERS / "local_cpu.yaml", trainer_ranks=3, engines=2, strategy="SPREAD")
    plan = plan_placement(resources)
    assert plan.count("trainer") == 3 and plan.count("generator") == 2 and plan.strategy == "SPREAD"


def test_colocated_roles_need_equal_counts():
    with pytest.raises(ValueError, match="same count"):
        ResourcesFile.model_validate(
            {
                "roles": {"trainer": {"count": 2}, "generator": {"count": 1}},
                "colocate": [["trainer", "generator"]],
            }
        )


def test_unknown_role_and_missing_slot_are_explained(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("roles:\n  trainr: {count: 1}\n")
    with pytest.raises(ValueError, match="invalid resources file"):
        load_resources(bad)
    plan = plan_placement(load_resources(CLUSTERS / "local_cpu.yaml"))
    with pytest.raises(KeyError, match=r"roles\.trainer\.count"):
        plan.slot("trainer", 5)


def test_role_resources_pin_bundles_and_add_up_when_colocated():
    """A custom resource on a role goes into each of its bundles (so Ray puts them on nodes that have it);
    colocated members' amounts add up like their CPUs."""
    resources = ResourcesFile.model_validate(
        {
            "roles": {
                "trainer": {"count": 2, "cpus": 1, "resources": {"node_b": 1}},
                "generator": {"count": 2, "cpus": 1, "resources": {"node_b": 0.5, "fast_disk": 1}},
                "scorer": {"count": 1, "cpus": 0.5, "resources": {"node_a": 1}},
            },
            "colocate": [["trainer", "generator"]],
        }
    )
    plan = plan_placement(resources)
    assert plan.bundles[:2] == [{"CPU": 2.0, "node_b": 1.5, "fast_disk": 1.0}] * 2
    assert plan.bundles[2] == {"CPU": 0.5, "node_a": 1.0}
    assert plan.slot("trainer", 1).cpus == 1 and plan.slot("trainer", 1).gpus == 0.0


def test_colocated_gpu_file_sleeps_its_engines():
    """gpu_colocated.yaml: every engine shares rank i's GPU and sleeps while the trainer computes; gpu_8x.yaml
    gives engines GPUs of their own (and colocates only the scorer with the reference)."""
    plan = plan_placement(load_resources(CLUSTERS / "gpu_colocated.yaml"))
    assert plan.engine_sleep and plan.share_gpus("trainer", "generator")  # → the weight sync uses gloo
    apart = plan_placement(load_resources(CLUSTERS / "gpu_8x.yaml"))
    assert not apart.engine_sleep and not apart.share_gpus("trainer", "generator")
    assert apart.share_gpus("scorer", "reference")


@pytest.mark.parametrize(
    "roles, colocate",
    [
        ({"trainer": {"gpus": 1}, "generator": {"gpus": 1}}, []),
        ({"trainer": {"gpus": 0}, "generator": {"gpus": 0}}, [["trainer", "generator"]]),
        ({"trainer": {"gpus": 1}, "scorer": {"gpus": 1}}, [["trainer", "scorer"]]),
    ],
    ids=["not colocated", "no GPUs", "no engines"],
)
def test_engine_sleep_needs_engines_on_the_trainers_gpus(roles, colocate):
    """vLLM's sleep mode frees GPU memory for a colocated trainer; anywhere else it is a mistake to refuse."""
    with pytest.raises(ValueError, match="engine_sleep: true needs the generator colocated"):
        ResourcesFile.model_validate({"roles": roles, "colocate": colocate, "engine_sleep": True})


def test_engine_sleep_only_for_runs_with_both_roles():
    """resources_for keeps engine_sleep when the algorithm starts engines and trainer ranks (MoCAN), and drops it
    when the colocated group loses its engines (DPO starts only trainer ranks), instead of refusing the file."""
    from base_job import BASE_JOB

    from ray_align.config import load_config
    from ray_align.placement import resources_for

    config = load_config(BASE_JOB, [f"placement.file={CLUSTERS / 'gpu_colocated.yaml'}"])
    assert resources_for(config, ("generator", "scorer", "trainer")).engine_sleep
    trainer_only = resources_for(config, ("trainer",))
    assert not trainer_only.engine_sleep and trainer_only.colocate == []
