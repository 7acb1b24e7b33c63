"""Options the job's algorithm never reads: set to a non-default value, they are refused with who reads them.

One table: option → the algorithms that read it, directly or through a stage they run (SACPO's steps are DPO or
KTO runs; MoCAN, PeCAN and CAID train with DPO's loss). An entry is a whole section ("ppo") or one key of a
section ("dpo.beta"); a key's entry overrides its section's. Options not in the table are read by every method
that needs them and are never refused here.

Left out on purpose: the `can` section and `dual.constraints` / `dual.rule` / `dual.lr` / `dual.lam_init` /
`dual.lam_max`. The built-in job (a MoCAN run) is the base that `ray-align run algorithm=... key=value` overrides,
so its CAN settings and constraint are present in every job built that way.
"""

from __future__ import annotations

from typing import Any

_DPO_LOSS = ("dpo", "mocan", "pecan", "caid", "sacpo")  # every run that trains with DPOSpec
# PeCAID is `algorithm: caid` with `caid.form: preference`: it reads all CAID reads, and PeCAN's label form
PECAID = "pecaid"

READ_BY: dict[str, tuple[str, ...]] = {
    "ppo": ("ppo_lag",),
    "caid": ("caid",),
    "sacpo": ("sacpo",),
    "dpo.beta": ("dpo",),  # MoCAN, PeCAN and CAID use can.beta, SACPO sacpo.beta / beta_over_lambda
    "dpo.preference": ("dpo",),
    "dpo.label_smoothing": _DPO_LOSS,
    "dpo.loss_type": _DPO_LOSS,
    "kto": ("kto", "sacpo"),  # SACPO with sacpo.loss or sacpo.helpfulness_loss = kto
    "kto.beta": ("kto",),  # SACPO's KTO step uses sacpo.beta / beta_over_lambda
    "can.pecan_label": ("pecan", PECAID),
    "dual.window": ("ppo_lag",),  # the safe_rlhf rule's; CAID's rule is projected
    "dual.delay_steps": ("ppo_lag",),
    "dual.pid": ("ppo_lag",),
    "models.critic": ("ppo_lag",),
    "models.cost_critic": ("ppo_lag",),
}


def readers(option: str) -> tuple[str, ...] | None:
    """The algorithms that read ``option`` ("section.key"), or None when the table does not restrict it."""
    return READ_BY.get(option, READ_BY.get(option.split(".")[0]))


def method_names(config: Any) -> set[str]:
    """The names ``config``'s method answers to in READ_BY: its algorithm, and "pecaid" for CAID's preference form."""
    if config.algorithm == "caid" and config.caid.form == "preference":
        return {"caid", PECAID}
    return {config.algorithm}


def _label(name: str) -> str:
    return "caid with caid.form: preference" if name == PECAID else name


def _non_default_keys(section: Any) -> list[str]:
    fields = type(section).model_fields
    return [k for k, f in fields.items() if getattr(section, k) != f.get_default(call_default_factory=True)]


def unused_options(config: Any) -> str | None:
    """One line naming every option set to a non-default value that ``config.algorithm`` never reads, or None."""
    unused, names = [], method_names(config)
    for name in dict.fromkeys(key.split(".")[0] for key in READ_BY):
        for key in _non_default_keys(getattr(config, name)):
            option = f"{name}.{key}"
            read_by = readers(option)
            if read_by is not None and not names & set(read_by):
                unused.append(f"{option} (read by {', '.join(map(_label, read_by))})")
    if not unused:
        return None
    them = "it" if len(unused) == 1 else "them"
    return (
        f"algorithm '{config.algorithm}' never reads {'; '.join(unused)}: remove {them}, or set the algorithm "
        f"that reads {them}"
    )
