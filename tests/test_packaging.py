"""The build finds every package and config without a warning; the built wheel carries the configs,
and ddpm-train runs from any working directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

# What a build reads: the metadata, the package discovery and the package's files.
PROJECT_FILES = ("pyproject.toml", "setup.py", "README.md")
PROJECT_DIRS = ("ddpm", "conf")
BUILDS = ("build_sdist", "build_wheel", "build_editable")


def expected_files() -> set[str]:
    """The wheel's paths that must be there: every sub-package's ``__init__.py``, every config and the classifier's weights."""
    inits = {str(p.relative_to(REPO)) for p in (REPO / "ddpm").rglob("__init__.py")}
    configs = {f"ddpm/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*") if p.suffix in (".yaml", ".py")}
    weights = {str(p.relative_to(REPO)) for p in (REPO / "ddpm" / "evaluate" / "weights").iterdir()}
    return inits | configs | weights


def build_copy(tmp_path: Path) -> tuple[Path, str]:
    """Builds an sdist, a wheel and an editable wheel of a copy of the project (setuptools writes
    ``build/`` and ``*.egg-info`` beside the sources); returns the output folder and the build's log."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, src / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    log = ""
    for build in BUILDS:  # one process each, as a build front-end runs them
        code = f"import sys; from setuptools import build_meta; build_meta.{build}(sys.argv[1])"
        proc = subprocess.run([sys.executable, "-W", "always", "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        log += proc.stdout + proc.stderr
    return out, log


def test_build_ships_every_package_and_config_without_warnings(tmp_path):
    out, log = build_copy(tmp_path)
    for warning in ("would be ignored", "BuildBackendWarning", "SetuptoolsDeprecationWarning"):
        assert warning not in log, log[log.find(warning) - 2000 : log.find(warning) + 500]
    expected = expected_files()
    assert {
        "ddpm/__init__.py",
        "ddpm/conf/train.yaml",
        "ddpm/conf/hydra/launcher/slurm.yaml",
        "ddpm/dashboard/views/__init__.py",
    } <= expected
    wheel_path = next(p for p in out.glob("ddpm-*.whl") if "editable" not in p.name)
    wheel = set(zipfile.ZipFile(wheel_path).namelist())
    assert expected - wheel == set()
    assert not [n for n in wheel if "__pycache__" in n or n.startswith(("conf/", "tests/", "scripts/"))]
    with tarfile.open(next(out.glob("ddpm-*.tar.gz"))) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        in_sdist = {n.removeprefix(f"{top}/") for n in sdist.getnames()}
    assert expected | {"setup.py", "pyproject.toml"} <= in_sdist  # ddpm/conf: the link's files
    # the plain layout: the editable wheel is one .pth path entry, not setuptools' meta-path finder (which
    # pip reports as a BuildBackendWarning on every install)
    editable = set(zipfile.ZipFile(next(out.glob("ddpm-*editable*.whl"))).namelist())
    assert [n for n in editable if n.endswith(".pth")] and not [n for n in editable if "finder" in n], editable


def test_setup_discovers_the_packages():
    """No hand-kept list: a new sub-package is found without touching the packaging files."""
    import tomllib

    assert "packages" not in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "find_namespace_packages" in (REPO / "setup.py").read_text()


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_outside_the_repo(data_dir, tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(wheels)], check=True, timeout=300)
    target = tmp_path / "site"
    wheel = next(wheels.glob("ddpm-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True, timeout=300
    )
    assert (target / "ddpm" / "conf" / "train.yaml").is_file()
    assert (target / "ddpm" / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()
    code = (
        "import sys, ddpm; from ddpm.train.cli import main; print('FROM', ddpm.__file__); "
        f"sys.argv = ['ddpm-train', 'dry_run=true', 'dataset=cryptopunks', 'paths.data_dir={data_dir}', "
        f"'paths.cache_dir={tmp_path / 'cache'}', 'hydra.run.dir={tmp_path / 'run'}']; main()"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"FROM {target}" in proc.stdout  # the wheel's copy, not the source tree
    assert "9000 images (3, 24, 24)" in proc.stdout
    assert (tmp_path / "run" / "config.yaml").is_file() and not any(work.iterdir())


@pytest.mark.slow
def test_console_script_from_another_directory(data_dir, tmp_path):
    exe = Path(sys.executable).with_name("ddpm-train")
    proc = subprocess.run(
        [str(exe), "dry_run=true", f"paths.data_dir={data_dir}", "model=tiny", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "model tiny:" in proc.stdout and "60000 images (1, 32, 32)" in proc.stdout
