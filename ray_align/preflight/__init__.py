"""The preflight: every check that can fail a job before anything starts, in about a second, without Ray.

    warnings = preflight(config, mode="run", overwrite=False)   # raises PreflightError (a UserError)

It opens the dataset and validates every row, finds every checkpoint the algorithm needs (folder with config,
tokenizer and weights, or a Hub id), compares the tokenizers of the models that read the policy's tokens,
checks the placement against the roles and the machine, the batch sizes against the ranks, and the output
folder (writable; a run folder of another configuration is refused). ``ray-align check`` runs it in ``check``
mode, where a Hub source that cannot be verified offline is a warning; ``ray-align run`` in ``run`` mode, where
it is a problem. docs/errors.md lists the checks.
"""

from __future__ import annotations

from ray_align.config import JobConfig
from ray_align.preflight.data import check_data
from ray_align.preflight.findings import Findings, Mode, PreflightError
from ray_align.preflight.models import check_models
from ray_align.preflight.resources import check_algorithm, check_batch_sizes, check_placement
from ray_align.preflight.run_folder import check_output_dir

__all__ = ["PreflightError", "preflight"]


def preflight(config: JobConfig, *, mode: Mode = "check", overwrite: bool = False) -> list[str]:
    """Check ``config`` against the files, folders and machine it names. Returns warnings; raises
    PreflightError listing every problem found (each names its setting and what to do)."""
    found = Findings(mode)
    roles = check_algorithm(config, found)
    if roles is not None:
        resources = check_placement(config, roles, found)
        if resources is not None:
            check_batch_sizes(config, roles, resources, found)
        check_models(config, roles, found)
    check_output_dir(config, found, overwrite=overwrite)
    check_data(config, found)
    found.raise_if_any()
    return found.warnings
