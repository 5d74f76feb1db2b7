"""A Hydra multirun as a result file for the docs (``ddpm/tables.py``): each job's overrides, config
keys and result JSON as one row, and the sweep command recovered from Hydra's ``multirun.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddpm.tables import collect_sweep_jobs, multirun_commands, render_template, unflatten

MULTIRUN_YAML = """hydra:
  overrides:
    hydra:
    - hydra.sweep.dir=/tmp/sweep_gauss
    - hydra.mode=MULTIRUN
    task:
    - synthetic=gaussian
    - synthetic.n=100,1000
    - regimes.analyses=[spectrum,collapse]
  job:
    name: regimes
    config_name: regimes
"""


def _sweep(root: Path) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text(MULTIRUN_YAML)
    for i, (n, tc) in enumerate([(100, 0.5), (1000, 0.3)]):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- synthetic=gaussian\n- synthetic.n={n}\n")
        (job / ".hydra" / "config.yaml").write_text(f"synthetic:\n  d: 16\n  sigma2: 0.25\n  n: {n}\n")
        result = {"n": n, "t_C": tc, "times": {"t_C": {"k": 5}}, "shape": [4], "config": {"big": 1}}
        (job / "regimes.json").write_text(json.dumps(result))
    (root / "2" / ".hydra").mkdir(parents=True)  # a job that failed: no result file
    (root / "2" / ".hydra" / "overrides.yaml").write_text("- synthetic.n=5\n")
    return root


def test_jobs_become_csv_and_json_rows(tmp_path: Path) -> None:
    jobs, missing = collect_sweep_jobs(_sweep(tmp_path), "regimes.json", ["synthetic.sigma2"])
    assert [m.name for m in missing] == ["2"]
    assert jobs[0].csv_row() == {
        "job": "0",
        "synthetic": "gaussian",
        "synthetic.n": "100",
        "synthetic.sigma2": 0.25,
        "n": 100,
        "t_C": 0.5,
        "times.t_C.k": 5,
    }
    row = jobs[1].json_row()
    assert row["overrides"] == {"synthetic": {"_value": "gaussian", "n": 1000}} and row["config"] == {"synthetic": {"sigma2": 0.25}}
    assert row["shape"] == [4] and row["t_C"] == 0.3  # the result's own config is left out, its lists kept
    table = render_template(
        "rows: | {overrides.synthetic.n:,} | {config.synthetic.sigma2:g} | {t_C:.2f} | {times.t_C.k} |",
        {"rows": [j.json_row() for j in jobs]},
    )
    assert table.splitlines() == ["| 100 | 0.25 | 0.50 | 5 |", "| 1,000 | 0.25 | 0.30 | 5 |"]


def test_the_sweep_command_comes_from_multirun_yaml(tmp_path: Path) -> None:
    _sweep(tmp_path / "a")
    _sweep(tmp_path / "a" / "nested")
    (tmp_path / "a" / "nested" / "multirun.yaml").write_text(MULTIRUN_YAML.replace("/tmp/sweep_gauss", "/tmp/sweep_gauss/nested"))
    assert multirun_commands(tmp_path / "a") == [
        "ddpm-regimes -m synthetic=gaussian synthetic.n=100,1000 'regimes.analyses=[spectrum,collapse]' hydra.sweep.dir=/tmp/sweep_gauss",
        "ddpm-regimes -m synthetic=gaussian synthetic.n=100,1000 'regimes.analyses=[spectrum,collapse]' hydra.sweep.dir=/tmp/sweep_gauss/nested",
    ]
    jobs, _ = collect_sweep_jobs(tmp_path / "a", "regimes.json")
    assert [j.job for j in jobs] == ["0", "1", "nested/0", "nested/1"]  # shallow first, in job order
    assert multirun_commands(tmp_path / "none") == []


def test_unflatten_inverts_flatten() -> None:
    assert unflatten({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    both = {"synthetic": {"_value": "mixture", "d": 8}}  # a config group and a key in it
    assert unflatten({"synthetic": "mixture", "synthetic.d": 8}) == both == unflatten({"synthetic.d": 8, "synthetic": "mixture"})


def test_a_field_scaled_by_another_field() -> None:
    rows = {"rows": [{"t_C": 0.443, "t_C_theory": 0.413, "n": 100}], "scale": 2}
    assert render_template("rows: | {t_C/t_C_theory:.3f} | {n*$.scale:.0f} |", rows) == "| 1.073 | 200 |"
    with pytest.raises(ValueError, match="not one"):
        render_template("rows: | {t_C/nothing:.3f} |", rows)
