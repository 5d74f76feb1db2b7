"""Bad input: every case of ``scripts/fault_drill.py``'s list gives one ``error:`` line and exit 2.

The cases run in-process through the console scripts' own ``main()`` (Hydra and all), which is
what the installed commands run; one case also runs as a real ``ddpm-train`` process, and the
fault drill (``tests/test_faults.py::test_fault_drill_quick``) runs a sample of them as processes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import REPO

_spec = importlib.util.spec_from_file_location("fault_drill", REPO / "scripts" / "fault_drill.py")
drill = importlib.util.module_from_spec(_spec)
sys.modules["fault_drill"] = drill
_spec.loader.exec_module(drill)

SCRIPTS = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("ddpm-")}


@pytest.fixture(scope="module")
def bad_files(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bad_input")
    drill.make_bad_input_files(work, tiny_ckpt)
    return work


def test_at_least_twenty_kinds() -> None:
    assert len({c.name for c in drill.BAD_INPUTS}) == len(drill.BAD_INPUTS) >= 20


@pytest.mark.parametrize("case", drill.BAD_INPUTS, ids=lambda c: f"{c.cmd}:{c.name}")
def test_bad_input_gives_one_line_and_exit_2(
    case, bad_files: Path, tiny_ckpt: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    if case.cmd not in SCRIPTS:
        pytest.skip(f"{case.cmd} is not installed")
    main = SCRIPTS[case.cmd].load()
    args = drill.bad_input_args(case, bad_files, tiny_ckpt, tmp_path / "run", data_dir)
    monkeypatch.setattr(sys, "argv", [case.cmd, *args])
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    err = capfd.readouterr().err
    assert exc.value.code == 2, err
    assert drill.check_one_line(exc.value.code, err, case.expect) is None, err
    assert not (bad_files / "EXECUTED").exists()  # the pickle's payload never ran
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert not ckpt_dir.exists() or not any(ckpt_dir.iterdir())  # failed before any work


def test_bad_input_as_a_real_process(data_dir: Path, tmp_path: Path) -> None:
    """The installed console script: exit code 2 and exactly one line on stderr."""
    exe = Path(sys.executable).parent / "ddpm-train"
    case = next(c for c in drill.BAD_INPUTS if c.name == "zero lr")
    proc = subprocess.run(
        [str(exe), *drill.bad_input_args(case, tmp_path, tmp_path, tmp_path / "run", data_dir)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: train.lr must be > 0, got 0.0\n"
    assert "Traceback" not in proc.stdout
