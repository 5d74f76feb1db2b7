"""Planning a study grid: jobs packed onto the cores (longest first), and the wall-time budget they must fit."""

from __future__ import annotations

from dataclasses import dataclass, field

from ddpm.errors import ConfigError


@dataclass
class Job:
    """One training job of a study.

    Args:
        name: its folder name.
        steps: its training steps.
        seconds: its planned wall time on one core.
        overrides: its command-line overrides.
    """

    name: str
    steps: int
    seconds: float
    overrides: list[str] = field(default_factory=list)


def pack(jobs: list[Job], cores: int) -> list[list[Job]]:
    """Longest-processing-time-first packing: each job goes to the core that frees first.

    Args:
        jobs: the jobs.
        cores: jobs at a time (>= 1).
    """
    if cores < 1:
        raise ConfigError(f"cores must be >= 1, got {cores}")
    plan: list[list[Job]] = [[] for _ in range(cores)]
    load = [0.0] * cores
    for job in sorted(jobs, key=lambda j: -j.seconds):
        i = load.index(min(load))
        plan[i].append(job)
        load[i] += job.seconds
    return plan


def check_budget(plan: list[list[Job]], budget_min: float, cpu: bool = False) -> float:
    """The planned wall time in minutes (CPU time of all cores with ``cpu``); a :class:`ConfigError`
    naming the longest core when it exceeds ``budget_min``."""
    loads = [sum(j.seconds for j in core) / 60 for core in plan]
    if cpu and sum(loads) > budget_min:
        raise ConfigError(
            f"the grid's scaled training needs {sum(loads):.1f} CPU-minutes, over the budget of {budget_min:g}; "
            "lower --steps-per-image or the largest n, or raise --budget-min"
        )
    wall = max(loads, default=0.0)
    if wall > budget_min:
        worst = plan[loads.index(wall)]
        raise ConfigError(
            f"the grid's scaled training needs {wall:.1f} min of wall time on {len(plan)} cores "
            f"({', '.join(f'{j.name}: {j.steps} steps' for j in worst)} on one core), over the budget of {budget_min:g} min; "
            "lower --steps-per-image or the largest n, or raise --budget-min"
        )
    return wall
