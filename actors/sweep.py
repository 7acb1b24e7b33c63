"""The sweep driver: what the points share runs once, then the points' trainings run side by side, each in a
trainer group of its own, while one set of evaluation roles samples π_ref once and each finished policy in
turn. Then the index, sweep.md and the figures (ray_align/sweep/report.py).

    shared mode       start generator/scorer/reference once → shared part → every point's dual (driver) →
                      ThreadPool(parallel): each point's training on its own placement group (a "lane") →
                      as each finishes: its evaluation on the shared engines, its report.md
    independent mode  every point is `run_job` of its config (whole runs; `parallel` of them at once)
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import ray

from actors.build import ClusterBuilder, build_cluster
from actors.coordinator import DualCoordinator, DualRuleSpec
from actors.evaluate import (
    EVAL_ROLES,
    REFERENCE,
    eval_sampling,
    eval_targets,
    placement_cpus,
    write_evaluation,
)
from actors.finish import policies_of
from actors.launch import connect, run_job, setup_console
from ray_align.algorithms import job_module
from ray_align.algorithms.common import prompt_token_ids
from ray_align.cluster import Cluster
from ray_align.config import JobConfig, dump_config
from ray_align.errors import UserError
from ray_align.eval.collect import PolicyToEvaluate, load_weights, sample_policy
from ray_align.eval.prompts import held_out_prompts
from ray_align.models.resolve import ResolvedModels, resolve_models
from ray_align.placement import plan_placement, resources_for
from ray_align.report.run_report import write_run_report
from ray_align.run_dir import RunDir, atomic_write_with, start_run_folder
from ray_align.sweep.plan import (
    SHARED,
    SweepPlan,
    SweepPoint,
    bundle_total,
    lane_resources,
    lanes_that_fit,
    role_resources,
)
from ray_align.sweep.report import console_summary, write_sweep_outputs
from ray_align.sweep.steps import STEPS
from ray_align.tracking import open_sinks

logger = logging.getLogger("ray_align")
EVAL_MARK = "sweep_evaluation"  # stages/<this>.done: the evaluation a rerun may reuse


@dataclass
class PointRun:
    point: SweepPoint
    out: RunDir | None = None
    coordinator: DualCoordinator | None = None
    prepared: Any = None
    result: dict | None = None
    status: str = "pending"
    error: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def fail(self, status: str, error: BaseException) -> None:
        """Record why the point stopped; a user error is its message, anything else keeps its traceback."""
        user = isinstance(error, UserError)
        self.status, self.error = status, str(error) if user else f"{type(error).__name__}: {error}"
        logger.error("point %s: %s", self.point.name, self.error, exc_info=None if user else error)

    def record(self) -> dict[str, Any]:
        p = self.point
        return {
            "name": p.name,
            "folder": str(p.folder),
            "values": p.values,
            "beta": p.config.can.beta,
            "status": self.status,
            "error": self.error,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


class Lane:
    """A point's own trainer bundles, reserved when its first trainer starts and freed by ``close``."""

    def __init__(self, config: JobConfig, models: ResolvedModels):
        self.config, self.models, self.builder = config, models, None

    def trainer(self, *args: Any, **kwargs: Any) -> Any:
        if self.builder is None:
            self.builder = ClusterBuilder(
                self.config, self.models, plan_placement(lane_resources(self.config))
            )
            self.builder.start()
        return self.builder.trainer(*args, **kwargs)

    def close(self) -> None:
        if self.builder is not None:
            self.builder.shutdown()
            self.builder = None


class EvalSession:
    """The evaluation roles of every point: π_ref is sampled once; each policy's weights are loaded into the
    engines in turn (ray_align.eval.collect). Used from the driver's main thread only."""

    def __init__(self, config: JobConfig, models: ResolvedModels, cluster: Cluster):
        self.cluster, self.models = cluster, models
        self.prompts = held_out_prompts(config).head(config.eval.num_prompts)
        self.ids = prompt_token_ids(self.prompts.texts, config, cluster.policy_path)
        self.sampling = eval_sampling(config)
        self.loaded: str | None = None  # unknown: the shared part may have loaded π_ref (models.reference)
        self._reference: pd.DataFrame | None = None
        self.seconds = 0.0

    def frame(self, policy: PolicyToEvaluate) -> pd.DataFrame:
        start = time.perf_counter()
        if self.loaded is None or Path(policy.path).resolve() != Path(self.loaded).resolve():
            self.cluster.generator.update_weights(load_weights(policy.path))
            self.loaded = policy.path
        frame = sample_policy(self.cluster, policy.name, self.prompts, self.ids, self.sampling)
        self.seconds += time.perf_counter() - start
        return frame

    def reference(self) -> pd.DataFrame:
        if self._reference is None:
            self._reference = self.frame(PolicyToEvaluate(REFERENCE, self.models.reference))
        return self._reference


def _copy_tables(shared: RunDir, out: RunDir, names: tuple[str, ...]) -> None:
    """The shared π_ref table into the point's tables/, so its report.md draws its own trade-off plot."""
    for name in names:
        source = shared.path("tables", name)
        if source.is_file():
            atomic_write_with(
                out.path("tables", name), lambda tmp, source=source: shutil.copyfile(source, tmp)
            )


def _view(cluster: Cluster, coordinator: Any, new_trainer: Any = None, engines: bool = False) -> Cluster:
    """A view of the roles with this coordinator and trainer factory. A point's view has no engines: they
    serve the shared part and the evaluations, from the driver's main thread only."""
    return Cluster(
        coordinator=coordinator,
        constraint_names=cluster.constraint_names,
        policy_path=cluster.policy_path,
        new_trainer=new_trainer,
        generator=cluster.generator if engines else None,
        scorer=cluster.scorer if engines else None,
        reference=cluster.reference if engines else None,
        critic_path=cluster.critic_path,
        cost_critic_path=cluster.cost_critic_path,
    )


def _open_point(
    run: PointRun, steps: Any, shared: Any, shared_out: RunDir, cluster: Cluster, overwrite: bool
):
    """The point's run folder, its copy of the shared table, and its dual (fast; a failure is the point's)."""
    config = run.point.config
    run.out = start_run_folder(config.output_dir, dump_config(config), overwrite=overwrite)
    _copy_tables(shared_out, run.out, steps.tables)
    if shared_out.trained:  # the shared stages trained again, so none of the point's may be reused
        run.out.trained.append("shared")
    run.coordinator = DualCoordinator(DualRuleSpec.from_config(config.dual, cluster.constraint_names))
    try:
        run.prepared = steps.prepare(config, _view(cluster, run.coordinator), shared)
        run.status = "ready"
    except UserError as e:  # an infeasible margin
        run.fail("dual failed", e)
    except ValueError as e:  # a solve that did not converge
        run.fail("dual failed", UserError(str(e)))


def _train_point(run: PointRun, steps: Any, shared: Any, cluster: Cluster, models: ResolvedModels) -> None:
    """One point's training in its own lane (runs in a worker thread); writes result.json and dual.json."""
    config, out = run.point.config, run.out
    lane = Lane(config, models)
    start = time.perf_counter()
    out.sinks = open_sinks(config, out.root)
    try:
        run.result = steps.train(
            config, _view(cluster, run.coordinator, lane.trainer), out, shared, run.prepared
        )
    finally:
        lane.close()
        out.close_sinks()
    run.seconds["train"] = time.perf_counter() - start
    run.seconds["train_end"] = time.perf_counter()
    run.result["seconds"] = run.seconds["train"]
    out.write_result(run.result)
    run.coordinator.save(str(out.path("dual.json")))


def _evaluate_point(
    run: PointRun, session: EvalSession | None, models: ResolvedModels, shared_s: float
) -> None:
    """The point's evaluation (π_ref's frame shared, reused on a rerun when nothing changed) and report.md."""
    config, out, result = run.point.config, run.out, run.result
    summary, start = None, time.perf_counter()
    if session is not None:
        policies = policies_of(models, result)
        marker = {"eval": config.eval.model_dump(mode="json"), "policies": {p.name: p.path for p in policies}}
        eval_json = out.path("eval", "eval.json")
        if (
            not out.trained
            and out.done(EVAL_MARK)
            and out.stage_info(EVAL_MARK) == marker
            and eval_json.is_file()
        ):
            logger.info("point %s: evaluation reused from an earlier attempt", run.point.name)
            summary = json.loads(eval_json.read_text())
        else:
            out.forget_done(EVAL_MARK)
            frames = [session.reference(), *(session.frame(p) for p in policies[1:])]
            frame = pd.concat(frames, ignore_index=True)
            targets = eval_targets(config, result)
            summary = write_evaluation(
                config, models, frame, policies, session.prompts, out.path("eval"), targets=targets
            )
            out.mark_done(EVAL_MARK, marker)
    run.seconds["evaluate"] = time.perf_counter() - start
    phases = {"shared part (sweep)": shared_s, config.algorithm: run.seconds["train"]}
    if summary is not None:
        phases["evaluate"] = run.seconds["evaluate"]
    write_run_report(out.root, config=config, result=result, summary=summary, phases=phases)
    run.status = "done"


def _start_shared(plan: SweepPlan, parallel: int | None, models: ResolvedModels) -> tuple[Any, Any, int]:
    """Connect to Ray (a local instance sized for the shared roles and `parallel` lanes) and start the shared
    roles; returns (cluster, builder, lanes at once): no more lanes than the free resources hold."""
    base, steps = plan.base, STEPS[plan.algorithm]
    roles = tuple(dict.fromkeys([*steps.roles, *(EVAL_ROLES if base.eval.enabled else ())]))
    shared = role_resources(base, roles)
    lane = bundle_total(lane_resources(base))
    wanted = max(1, min(len(plan.points), parallel or len(plan.points)))
    connect(base, bundle_total(shared).get("CPU", 0.0) + wanted * lane.get("CPU", 0.0))
    cluster, builder = build_cluster(base, models, roles, resources=shared)
    fit = lanes_that_fit(ray.available_resources(), lane)
    if fit < wanted:
        logger.info(
            "the cluster's free resources hold %d trainer group(s) at once; the rest queue", max(fit, 1)
        )
    return cluster, builder, max(1, min(wanted, fit))


def _run_points(runs, steps, shared, cluster, models, parallel, session, timing) -> None:
    """Train the ready points `parallel` at a time; evaluate each as it finishes (π_ref meanwhile)."""
    ready = [r for r in runs if r.status == "ready"]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-point") as pool:
        futures = {pool.submit(_train_point, r, steps, shared, cluster, models): r for r in ready}
        if session is not None and ready:
            session.reference()  # on the idle engines while the first trainings run
        for future in as_completed(futures):
            run = futures[future]
            try:
                future.result()
                _evaluate_point(run, session, models, timing["shared"])
            except Exception as e:  # one point's failure leaves the others running
                run.fail("failed", e)
    ends = [r.seconds.pop("train_end") for r in ready if "train_end" in r.seconds]
    timing["trainings_wall"] = (max(ends) - start) if ends else 0.0
    timing["trainings_sum"] = sum(r.seconds.get("train", 0.0) for r in ready)
    timing["evaluations_sum"] = session.seconds if session is not None else 0.0


def _run_shared(plan: SweepPlan, parallel: int | None, overwrite: bool, timing: dict) -> list[PointRun]:
    steps = STEPS[plan.algorithm]
    base = plan.base
    models = resolve_models(base.models, seed=base.seed)
    start = time.perf_counter()
    cluster, builder, parallel = _start_shared(plan, parallel, models)
    timing["start_roles"] = time.perf_counter() - start
    timing["parallel"] = parallel
    runs = [PointRun(p) for p in plan.points]
    try:
        start = time.perf_counter()
        shared_out = start_run_folder(base.output_dir, dump_config(base), overwrite=overwrite)
        lane = Lane(base, models)  # PeCAN's DPO_H/DPO_S and SACPO's step 1 train here
        try:
            view = _view(cluster, cluster.coordinator, lane.trainer, engines=True)
            shared = steps.shared(base, view, shared_out)
        finally:
            lane.close()
        timing["shared"] = time.perf_counter() - start
        logger.info("shared part (%s) done in %.1f s", SHARED[plan.algorithm][0], timing["shared"])
        for run in runs:
            _open_point(run, steps, shared, shared_out, cluster, overwrite)
        session = EvalSession(base, models, cluster) if base.eval.enabled else None
        _run_points(runs, steps, shared, cluster, models, parallel, session, timing)
    finally:
        builder.shutdown()
    return runs


def _run_independent(plan: SweepPlan, parallel: int | None, overwrite: bool, timing: dict) -> list[PointRun]:
    """Each point is a whole run (`run_job`), `parallel` at a time (default 1: each holds a full placement)."""
    base = plan.base
    parallel = max(1, min(len(plan.points), parallel or 1))
    module = job_module(base)  # PeCAID (caid.form: preference) has its own roles
    per_run = bundle_total(resources_for(base, module.ROLES)).get("CPU", 0.0)
    connect(base, parallel * max(per_run, placement_cpus(base) if base.eval.enabled else 0.0))
    timing["parallel"] = parallel
    runs = [PointRun(p) for p in plan.points]

    def one(run: PointRun) -> None:
        start = time.perf_counter()
        try:
            run_job(run.point.config, overwrite=overwrite, preflight=False)
            run.status = "done"
        except Exception as e:
            run.fail("failed", e)
        run.seconds["run"] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-run") as pool:
        list(pool.map(one, runs))
    timing["runs_wall"] = time.perf_counter() - start
    timing["runs_sum"] = sum(r.seconds["run"] for r in runs)
    return runs


def run_sweep(plan: SweepPlan, *, parallel: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run every point of ``plan``; write sweep.json, points.parquet, sweep.md and the figures into the sweep
    folder; print one line per point. Returns the sweep.json document."""
    setup_console(plan.base)
    start = time.perf_counter()
    plan.root.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    logger.info("sweep of %d %s points into %s (%s)", len(plan.points), plan.algorithm, plan.root, plan.mode)
    if plan.mode == "shared":
        runs = _run_shared(plan, parallel, overwrite, timing)
    else:
        logger.info("the points run as whole runs: %s", plan.reason)
        runs = _run_independent(plan, parallel, overwrite, timing)
    timing["wall"] = time.perf_counter() - start
    names = list(plan.base.models.constraint_names)
    meta = {
        "name": plan.base.name,
        "algorithm": plan.algorithm,
        "job": plan.job,
        "mode": plan.mode,
        "shared": SHARED.get(plan.algorithm, ("",))[0] if plan.mode == "shared" else "",
        "reason": plan.reason,
        "grid": {a.key: list(a.values) for a in plan.axes},
        "constraints": names,
        "timing": {k: round(v, 2) for k, v in timing.items()},
        "points": [r.record() for r in runs],
    }
    frame = write_sweep_outputs(plan.root, meta, {r.point.name: r.point.config.can.beta for r in runs})
    print(console_summary(meta, frame, plan.root))
    return meta
