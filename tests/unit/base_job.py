"""The tests' base job file: a small tiny-model job independent of the built-in quickstart."""

from pathlib import Path

BASE_JOB = str(Path(__file__).resolve().parents[1] / "base_job.yaml")
