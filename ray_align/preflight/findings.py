"""What the preflight found: problems (the job cannot run), warnings, and sources it could not verify."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ray_align.errors import UserError

Mode = Literal["check", "run"]


class PreflightError(UserError):
    """The job cannot start; ``problems`` lists each reason (with its key and what to do)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems; nothing was started:\n" + "\n".join(
                f"  - {p}" for p in problems
            )
        super().__init__(text)


@dataclass
class Findings:
    """Collects the checks' results. In ``check`` mode a source that could not be verified (a Hub id while the
    Hub is unreachable) is a warning; in ``run`` mode it is a problem, since the run would fail on it later."""

    mode: Mode
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def unverified(self, message: str) -> None:
        if self.mode == "run":
            self.problems.append(message)
        else:
            self.warnings.append(f"could not verify: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise PreflightError(self.problems)
