"""The job driver: connect to Ray, start the roles an algorithm needs, run it, shut everything down.

Works the same on one machine (a local Ray instance is started) and under ``ray job submit`` (RAY_ADDRESS is set,
and the driver joins that cluster).
"""

from __future__ import annotations

import logging
import math
import os
import time

from actors.failures import describe_actor_death
from ray_align.algorithms import job_module
from ray_align.config import JobConfig, dump_config
from ray_align.errors import UserError
from ray_align.models.resolve import resolve_models
from ray_align.preflight.resources import unreachable_cluster
from ray_align.run_dir import RunDir, start_run_folder
from ray_align.tracking import open_sinks

logger = logging.getLogger("ray_align")


class LaunchError(RuntimeError):
    """The job could not start or finish; the message says what to do."""


def connect(config: JobConfig, logical_cpus: float) -> None:
    """Join the configured cluster (or RAY_ADDRESS), else start a local instance sized for the placement."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # actors inherit it; vLLM's INFO lines drown the run's
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        problem = unreachable_cluster(address)  # also in the preflight; RAY_ADDRESS may change
        if problem:
            raise LaunchError(problem)
        ray.init(address=address, log_to_driver=config.logging.verbose)
        return
    # Logical CPUs: at least what the bundles ask for; roles mostly wait on each other on one machine.
    cpus = config.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(logical_cpus))
    # address="local": a private instance even when another one runs on this machine (ray.address=auto joins it).
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=config.logging.verbose,  # the actors' start-up noise (vLLM, DeepSpeed) only when asked
        logging_level=logging.INFO if config.logging.verbose else logging.WARNING,
    )


def setup_console(config: JobConfig) -> None:
    """One short line per event: time and message (level names only for warnings and errors); third-party
    loggers at WARNING unless logging.verbose."""
    handler = logging.StreamHandler()
    handler.setFormatter(_ConsoleFormatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=config.logging.level, handlers=[handler], force=True)
    if not config.logging.verbose:
        for name in ("ray", "vllm", "deepspeed", "transformers", "datasets", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return text.replace(record.getMessage(), f"{record.levelname}: {record.getMessage()}", 1)
        return text


def run_job(config: JobConfig, *, overwrite: bool = False, preflight: bool = True) -> dict:
    """Run the job. ``preflight=False`` when the caller already ran ray_align.preflight on ``config``;
    ``overwrite`` clears an output_dir that holds a run of another configuration (else it is refused)."""
    setup_console(config)
    if preflight:
        from ray_align.preflight import preflight as check

        for warning in check(config, mode="run", overwrite=overwrite):
            logger.warning(warning)
    from actors.build import build_cluster, resources_for
    from ray_align.placement import plan_placement

    out = start_run_folder(config.output_dir, dump_config(config), overwrite=overwrite)  # after the preflight
    out.sinks = open_sinks(config, out.root)
    module = job_module(config)  # PeCAID: algorithm caid, caid.form preference
    models = resolve_models(config.models, seed=config.seed)
    plan = plan_placement(resources_for(config, module.ROLES))
    connect(config, sum(b.get("CPU", 0.0) for b in plan.bundles))

    start = time.perf_counter()
    builder = None
    try:
        cluster, builder = build_cluster(config, models, module.ROLES)
        phases = {"start roles": time.perf_counter() - start}
        logger.info("roles started in %.1f s; running %s", phases["start roles"], config.algorithm)
        result = module.run(config, cluster, out)
        phases[config.algorithm] = time.perf_counter() - start - phases["start roles"]
        result["seconds"] = time.perf_counter() - start
        out.write_result(result)
        cluster.coordinator.save(str(out.path("dual.json")))
    except Exception as e:
        raise _readable(e, out) from None
    finally:
        if builder is not None:
            builder.shutdown()
        out.close_sinks()
    from actors.finish import finish_run

    try:
        finish_run(config, models, result, out, phases)
    except Exception as e:
        raise _readable(e, out, phase="the evaluation after the run") from None
    return result


def _readable(e: Exception, out: RunDir, phase: str = "the run") -> BaseException:
    """A user error raised inside an actor (an infeasible margin) as itself, without Ray's wrapping; an actor's
    death as one paragraph; anything else unchanged (a bug keeps its traceback)."""
    cause = getattr(e, "cause", None)  # a RayTaskError carries the actor's own exception
    if isinstance(cause, UserError):
        return UserError(str(cause))
    death = describe_actor_death(e)
    if death is None:
        return e
    logger.debug("%s stopped because an actor died", phase, exc_info=e)
    return LaunchError(
        f"during {phase}, {death}. What the run finished is kept in {out.root}; rerun the same command to "
        "resume (logging.level=DEBUG shows the traceback)."
    )
