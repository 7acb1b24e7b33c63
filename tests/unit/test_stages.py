"""Stage records of one-shot runs: a finished stage is reused only by the same job with the same settings."""

from __future__ import annotations

from base_job import BASE_JOB

from ray_align.algorithms.stages import config_fingerprint, finished_stage, record_stage
from ray_align.config import load_config
from ray_align.run_dir import RunDir


def _config(*overrides: str):
    return load_config(BASE_JOB, ["algorithm=dpo", *overrides])


def _finish(config, out: RunDir, stage: str) -> None:
    out.checkpoint(stage).mkdir(parents=True, exist_ok=True)
    record_stage(config, out, stage, {"steps": 7})


def _rerun(out: RunDir) -> RunDir:
    """The same run folder as a new attempt sees it."""
    return RunDir(out.root)


def test_fingerprint_ignores_where_and_how_a_run_is_kept_but_not_what_it_computes():
    base = config_fingerprint(_config())
    assert config_fingerprint(_config("output_dir=/elsewhere", "checkpoint.resume=false")) == base
    assert config_fingerprint(_config("logging.level=DEBUG", "name=other", "placement.trainer_ranks=2")) == base
    assert config_fingerprint(_config("training.lr=2e-5")) != base
    assert config_fingerprint(_config("seed=1")) != base


def test_a_finished_stage_is_reused_with_its_stats(tmp_path):
    config, out = _config(), RunDir(tmp_path)
    _finish(config, out, "dpo")
    checkpoint, stats = finished_stage(config, _rerun(out), "dpo")
    assert checkpoint == str(out.checkpoint("dpo"))
    assert stats == {"steps": 7, "resumed": True}
    assert finished_stage(config, _rerun(out), "sacpo_2_safety") is None  # other stages are not


def test_changed_settings_or_resume_off_train_again(tmp_path):
    config, out = _config(), RunDir(tmp_path)
    _finish(config, out, "dpo")
    assert finished_stage(_config("training.epochs=5"), _rerun(out), "dpo") is None
    _finish(config, out, "dpo")
    assert finished_stage(_config("checkpoint.resume=false"), _rerun(out), "dpo") is None


def test_a_stage_that_trains_forgets_its_record_and_later_stages_train_too(tmp_path):
    config, out = _config(), RunDir(tmp_path)
    _finish(config, out, "sacpo_1_helpfulness")
    _finish(config, out, "sacpo_2_safety")
    attempt = _rerun(out)
    assert finished_stage(_config("training.epochs=5"), attempt, "sacpo_1_helpfulness") is None
    assert not out.done("sacpo_1_helpfulness")  # a crash now cannot pair the old record with new weights
    # step 2 starts from the retrained step 1, so its old result must not be reused in this attempt
    assert finished_stage(config, attempt, "sacpo_2_safety") is None


def test_a_record_without_its_checkpoint_trains_again(tmp_path):
    config, out = _config(), RunDir(tmp_path)
    _finish(config, out, "dpo")
    out.checkpoint("dpo").rmdir()
    assert finished_stage(config, _rerun(out), "dpo") is None


def test_a_stage_that_trains_again_drops_the_rows_of_the_earlier_attempt(tmp_path):
    config, out = _config(), RunDir(tmp_path)
    out.log_metrics(0, "sacpo_1_helpfulness", {"loss": 0.69})
    out.log_metrics(0, "sacpo_2_safety", {"loss": 0.69})
    out.log_metrics(1, "sacpo_2_safety_eval", {"accuracy": 0.5})
    with open(out.path("metrics.jsonl"), "a") as f:
        f.write('{"step": 1, "stage": "sacpo_2_sa')  # the crash cut this line short
    assert finished_stage(config, out, "sacpo_2_safety") is None
    assert out.metrics() == [{"step": 0, "stage": "sacpo_1_helpfulness", "loss": 0.69}]
