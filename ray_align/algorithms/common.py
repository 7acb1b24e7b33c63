"""Steps shared by the methods: load prompts, sample and score, turn scores into a dual table.

Everything here talks to roles through ``ray_align.cluster.Cluster``; nothing imports Ray.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ray_align.cluster import Cluster, Rollouts, Sampling
from ray_align.config.schema import JobConfig
from ray_align.data import load_pku, prompts, split_train_eval
from ray_align.dual.can import ScoredTable
from ray_align.dual.table import table_from_long, write_scored_table
from ray_align.progress import bar

logger = logging.getLogger(__name__)


def builtin_dataset() -> Path:
    """A 16-row dataset in the PKU-SafeRLHF schema shipped with the package (the quickstart's data)."""
    return Path(str(resources.files("ray_align") / "assets" / "mini_safety.jsonl"))


BUILTIN = "builtin:"  # data.source prefix naming a dataset shipped in ray_align/assets


def dataset_source(source: str | None) -> str:
    """The file, folder or Hub id behind ``data.source``: unset = ``builtin:mini_safety`` (16 rows);
    ``builtin:quickstart`` is the quickstart's 48 prompts."""
    if source is None:
        return str(builtin_dataset())
    if source.startswith(BUILTIN):
        name = source[len(BUILTIN) :]
        path = Path(str(resources.files("ray_align") / "assets" / f"{name}.jsonl"))
        if not path.is_file():
            raise ValueError(f"data.source: no built-in dataset '{name}' (known: mini_safety, quickstart)")
        return str(path)
    return source


def load_dataset(config: JobConfig):
    """The configured PKU-format dataset (or the built-in one), split into (train, eval) by prompt.

    ``data.max_prompts`` keeps the rows of the first that many distinct prompts (file order) before the split,
    so both parts shrink together and a prompt's rows are never separated.
    """
    source = dataset_source(config.data.source)
    ds, report = load_pku(source, on_bad_row=config.data.on_bad_row)
    if report.n_dropped:
        logger.warning("dropped %d malformed rows: %s", report.n_dropped, report.summary())
    if config.data.max_prompts is not None:
        column = ds["prompt"]
        kept = set(list(dict.fromkeys(column))[: config.data.max_prompts])
        ds = ds.select([i for i, p in enumerate(column) if p in kept])
    if config.data.eval_fraction == 0:
        return ds, None
    return split_train_eval(ds, config.data.eval_fraction, config.data.seed)


def tokenize_options(config: JobConfig) -> dict:
    """Keyword arguments of ``tokenize_pair`` / ``tokenize_prompt_response`` from the data section."""
    d = config.data
    return {"template": d.template, "max_length": d.max_length, "append_eos": d.response_eos}


def reference_path(config: JobConfig, cluster: Cluster) -> str:
    """π_ref's checkpoint: ``models.reference``, else the policy's start (the SFT model)."""
    return config.models.reference or cluster.policy_path


def generators_on_reference(config: JobConfig, cluster: Cluster) -> None:
    """Load π_ref into the generators when ``models.reference`` is another checkpoint than the policy they
    start on, so that what is sampled "from π_ref" (the dual's table, CAID's first sample) is π_ref."""
    path = reference_path(config, cluster)
    if cluster.generator is not None and Path(path).resolve() != Path(cluster.policy_path).resolve():
        from ray_align.eval.collect import load_weights

        cluster.generator.update_weights(load_weights(path))


def prompt_texts(ds, limit: int | None) -> list[str]:
    texts = list(prompts(ds)["prompt"])
    return texts[:limit] if limit else texts


def sampling_from(config: JobConfig, n: int, seed: int | None = None) -> Sampling:
    g = config.generation
    return Sampling(
        n=n,
        temperature=g.temperature,
        top_p=g.top_p,
        max_tokens=g.max_tokens,
        seed=g.seed if seed is None else seed,
        stop=tuple(g.stop),
    )


@dataclass
class ScoredSamples:
    """K samples for each of N prompts, scored. reward [R]; costs [R, m] (cost scale); R = N·K rows."""

    rollouts: Rollouts
    reward: np.ndarray
    costs: np.ndarray

    @property
    def utilities(self) -> np.ndarray:
        return -self.costs

    def table(self) -> ScoredTable:
        table, _ = table_from_long(np.asarray(self.rollouts.prompt_index), self.reward, self.utilities)
        return table

    def write(self, path: Path, prompt_texts: list[str], names: list[str]) -> Path:
        """The Parquet table `ray-align dual` reads: prompt_id, reward, one utility column per constraint."""
        index = np.asarray(self.rollouts.prompt_index)
        return write_scored_table(
            path,
            index,
            self.reward,
            {name: self.utilities[:, j] for j, name in enumerate(names)},
            extra={"prompt": [prompt_texts[i] for i in index], "response": list(self.rollouts.text)},
        )


def prompt_token_ids(texts: list[str], config: JobConfig, tokenizer_path: str) -> list[list[int]]:
    """Formatted (PKU or chat template) and left-truncated prompt ids: what the engines condition on."""
    from transformers import AutoTokenizer

    from ray_align.data.formatting import tokenize_prompt

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return [
        tokenize_prompt(
            tokenizer, t, template=config.data.template, max_prompt_length=config.data.max_prompt_length
        )
        for t in texts
    ]


def sample_and_score(cluster: Cluster, prompt_ids: list[list[int]], sampling: Sampling) -> ScoredSamples:
    """Generate ``sampling.n`` responses per prompt through the generators, then score each (reward, costs)."""
    rollouts = generate_in_chunks(cluster, prompt_ids, sampling)
    start = time.perf_counter()
    scores = np.asarray(cluster.scorer.score(rollouts.prompt_ids, rollouts.response_ids), dtype=np.float64)
    logger.debug("scored %d responses in %.1f s", len(rollouts), time.perf_counter() - start)
    if scores.ndim != 2 or scores.shape[1] != 1 + len(cluster.constraint_names):
        raise ValueError(
            f"scorer returned shape {scores.shape}; expected [n, 1 + {len(cluster.constraint_names)}]"
        )
    return ScoredSamples(rollouts, scores[:, 0], scores[:, 1:])


SAMPLE_CHUNK = (
    32  # prompts per generate call: the progress bar's unit (seeds stay per prompt, so results match)
)


def generate_in_chunks(cluster: Cluster, prompt_ids: list[list[int]], sampling: Sampling) -> Rollouts:
    """``cluster.generator.generate`` over the whole list, in chunks, with a progress bar."""
    parts, start = [], time.perf_counter()
    with bar(len(prompt_ids), "sampling", unit="prompt") as progress:
        for first in range(0, len(prompt_ids), SAMPLE_CHUNK):
            chunk = prompt_ids[first : first + SAMPLE_CHUNK]
            part = cluster.generator.generate(chunk, sampling, first_index=first)
            parts.append(part)
            progress.update(len(chunk))
    rollouts = Rollouts.concat(parts, list(range(0, len(prompt_ids), SAMPLE_CHUNK)))
    logger.debug(
        "sampled %d responses (%d prompts × %d) in %.1f s",
        len(rollouts),
        len(prompt_ids),
        sampling.n,
        time.perf_counter() - start,
    )
    return rollouts
