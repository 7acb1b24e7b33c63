"""models.reference is DPO's π_ref on the real cluster (Ray, DeepSpeed trainer groups, the tiny family).

With the reference = the policy, DPO's first loss is log 2 exactly (π = π_ref before the first step); with
another reference checkpoint of the same vocabulary it is not, and the policy still trains from models.policy.
About a minute on a 2-core machine.
"""

from __future__ import annotations

import math

import pytest
from base_job import BASE_JOB

from actors.launch import run_job
from ray_align.config import load_config
from ray_align.models.tiny import TinySpec, build_tiny_models
from ray_align.run_dir import RunDir

pytestmark = pytest.mark.integration

DPO = ["algorithm=dpo", "training.epochs=1", "dual.constraints=[]"]


def first_dpo_loss(tmp_path, name: str, *overrides: str) -> float:
    config = load_config(BASE_JOB, [f"output_dir={tmp_path / name}", *DPO, *overrides])
    run_job(config)
    return RunDir(config.output_dir).metrics("dpo")[0]["loss"]


def test_dpo_reference_is_models_reference(tmp_path, ray_session):
    other = build_tiny_models(tmp_path / "other-family", TinySpec(seed=5))  # same tokenizer, other weights
    assert first_dpo_loss(tmp_path, "same") == pytest.approx(math.log(2), abs=1e-5)
    loss = first_dpo_loss(tmp_path, "other", f"models.reference={other.policy}")
    assert abs(loss - math.log(2)) > 1e-3
