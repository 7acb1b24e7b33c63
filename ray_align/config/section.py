"""The base of every job-config section: unknown keys, NaN and ±inf are refused."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # allow_inf_nan=False: NaN and ±inf are refused in every float field (a NaN learning rate passes `gt=0`).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
