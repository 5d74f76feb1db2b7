"""Fault tolerance: torn and failed writes, kills, signals, NaNs, the run lock and unsafe pickles."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_config, tiny_train_overrides

from ddpm import checkpoint as ckpt_mod
from ddpm.checkpoint import PARTIAL_RE, clean_partial_writes, find_latest, load_checkpoint, save_checkpoint
from ddpm.errors import CheckpointError
from ddpm.runlock import RunDirLocked, RunLock, held_by_another
from ddpm.train import TrainingDiverged, parse_step_ranges, train


@pytest.fixture
def one_thread():
    """Tiny models run faster on one CPU thread, above all on a busy machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"step": step, "model": {"w": torch.randn(256, 256, generator=g)}}


def _fork(fn) -> int:
    """Run ``fn`` in a forked child (exit code 0 unless it raises); returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            fn()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _wait_for(cond, timeout: float = 60.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.005)
    return False


# ---------------------------------------------------------------------------- writes
def test_failed_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(_state(1), tmp_path, 1, keep=3)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):  # half the bytes reach the disk, then ENOSPC
        real_save(obj, f)
        f.seek(0)
        f.truncate(f.tell() // 2 + 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod.torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match=r"could not write checkpoint .*step_0000002\.pt: No space left on device; the checkpoints already"
    ):
        save_checkpoint(_state(2), tmp_path, 2, keep=3)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_0000001.pt"]  # no torn temp file left
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], _state(1)["model"]["w"])


def test_unwritable_folder_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(_state(1), tmp_path, 1, keep=3)

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(ckpt_mod.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError, match="Permission denied"):
        save_checkpoint(_state(2), tmp_path, 2, keep=3)
    monkeypatch.undo()
    assert find_latest(tmp_path)[1]["step"] == 1


def test_real_file_size_limit_fails_cleanly(tmp_path: Path) -> None:
    """The kernel refuses the write (RLIMIT_FSIZE -> EFBIG); torch.save wraps that in a RuntimeError."""
    import resource

    save_checkpoint(_state(1), tmp_path, 1, keep=3)
    result = tmp_path.parent / f"{tmp_path.name}.result"

    def child() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(_state(2), tmp_path, 2, keep=3)
            msg = "saved"
        except CheckpointError as exc:
            msg = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        result.write_text(msg)

    _, status = os.waitpid(_fork(child), 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert re.search(r"could not write checkpoint .*step_0000002\.pt: File too large", result.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_0000001.pt"]
    assert load_checkpoint(tmp_path / "step_0000001.pt")["step"] == 1


def test_sigkill_inside_a_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """A real SIGKILL while the slow-write hook holds a half-written temp file."""
    save_checkpoint(_state(1), tmp_path, 1, keep=3)

    def child() -> None:
        os.environ[ckpt_mod.SLOW_WRITE_ENV] = "30"
        save_checkpoint(_state(2), tmp_path, 2, keep=3)

    pid = _fork(child)
    torn = lambda: [p for p in tmp_path.iterdir() if PARTIAL_RE.match(p.name) and p.stat().st_size > 0]  # noqa: E731
    assert _wait_for(lambda: bool(torn()))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    (partial,) = torn()
    assert partial.name.startswith(".step_0000002.pt.") and partial.name.endswith(".tmp")
    path, state = find_latest(tmp_path)
    assert (path.name, state["step"]) == ("last.pt", 1)
    assert clean_partial_writes(tmp_path) == [partial]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_0000001.pt"]


def test_partial_names() -> None:
    for name in (".step_0000010.pt.k2j3_x.tmp", ".last.pt.1234.lnk", ".last.pt.ab_c.tmp"):
        assert PARTIAL_RE.match(name), name
    for name in ("step_0000010.pt", "last.pt", ".lock", "step_0000010.pt.tmp", ".config.yaml.tmp"):
        assert not PARTIAL_RE.match(name), name


# ---------------------------------------------------------------------------- loading
def test_resume_latest_skips_truncated_and_garbage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for step in (1, 2, 3):
        save_checkpoint(_state(step), tmp_path, step, keep=10)
    newest = tmp_path / "step_0000003.pt"
    with newest.open("r+b") as f:  # a truncated copy: last.pt (same inode) is torn too
        f.truncate(newest.stat().st_size // 2)
    path, state = find_latest(tmp_path)
    assert (path.name, state["step"]) == ("step_0000002.pt", 2)
    assert "skipping checkpoint" in caplog.text and "corrupt or truncated" in caplog.text
    newest.unlink()
    for seed in range(20):  # garbage makes the unpickler fail in many ways (UnpicklingError, IndexError, ...)
        (tmp_path / "last.pt").unlink()
        (tmp_path / "last.pt").write_bytes(random.Random(seed).randbytes(1000))
        assert find_latest(tmp_path)[1]["step"] == 2
        with pytest.raises(CheckpointError, match=r"checkpoint .*last\.pt is corrupt"):
            load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("pickle_bytes", [b"e.", b"(e.", b"}u."], ids=["appends-on-empty", "appends-on-mark", "setitems-on-empty"])
def test_malformed_pickle_inside_a_valid_zip_is_a_checkpoint_error(tmp_path: Path, pickle_bytes: bytes) -> None:
    """The safe unpickler meets these with IndexError, not UnpicklingError: still one clear error."""
    save_checkpoint(_state(1), tmp_path, 1, keep=10)
    good = tmp_path / "step_0000001.pt"
    bad = tmp_path / "step_0000002.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, pickle_bytes if name.endswith("/data.pkl") else zin.read(name))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad)
    (tmp_path / "last.pt").unlink()
    assert find_latest(tmp_path)[1]["step"] == 1


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_carrying_code_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt_mod.FORMAT, "step": 5, "payload": _Evil(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_checkpoint(evil)
    assert not marker.exists()
    save_checkpoint(_state(1), tmp_path / "ck", 1, keep=3)
    (tmp_path / "ck" / "last.pt").unlink()
    evil.rename(tmp_path / "ck" / "last.pt")
    assert find_latest(tmp_path / "ck")[1]["step"] == 1
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------- the lock
def test_run_lock_refuses_a_second_run_until_the_first_ends(tmp_path: Path) -> None:
    ready = tmp_path / "ready"

    def holder() -> None:
        with RunLock(tmp_path):
            ready.touch()
            time.sleep(60)

    pid = _fork(holder)
    assert _wait_for(ready.exists)
    with pytest.raises(RunDirLocked, match="another ddpm-train process is running"), RunLock(tmp_path):
        pass
    os.kill(pid, signal.SIGKILL)  # the kernel drops a dead process's flock
    os.waitpid(pid, 0)
    with RunLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
        assert lock.fd is not None


def test_second_run_is_refused_before_hydra_writes_into_the_live_run_dir(tmp_path: Path) -> None:
    """Hydra writes ``.hydra/*.yaml`` and the log before the command runs: the refusal must come first."""
    run_dir, ready = tmp_path / "run", tmp_path / "ready"
    (run_dir / ".hydra").mkdir(parents=True)
    live = {run_dir / ".hydra" / "config.yaml": b"the live run's config\n", run_dir / "train.log": b"the live run's log\n"}
    for path, data in live.items():
        path.write_bytes(data)

    def holder() -> None:
        with RunLock(run_dir):
            ready.touch()
            time.sleep(60)

    pid = _fork(holder)
    try:
        assert _wait_for(ready.exists)
        assert held_by_another(run_dir)
        script = Path(sys.executable).with_name("ddpm-train")
        res = subprocess.run([str(script), "model=tiny", f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=120)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"error: another ddpm-train process is running in {run_dir}; wait for it to end or choose another hydra.run.dir"
    )
    assert {p: p.read_bytes() for p in live} == live
    assert sorted(p.name for p in run_dir.rglob("*")) == [".hydra", ".lock", "config.yaml", "train.log"]
    assert not held_by_another(run_dir)  # the kernel dropped the dead holder's lock
    assert not held_by_another(tmp_path / "never-trained-here")


# ---------------------------------------------------------------------------- training
def test_parse_step_ranges() -> None:
    assert parse_step_ranges("") == []
    assert parse_step_ranges("5, 8-9,12-") == [(5, 5.0), (8, 9.0), (12, float("inf"))]
    with pytest.raises(Exception, match="expected steps"):
        parse_step_ranges("x")


def test_nonfinite_steps_are_skipped_then_training_stops(
    one_thread: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDPM_TEST_NONFINITE_STEPS", "1-")
    cfg = compose_config(
        "train",
        tiny_train_overrides(
            data_dir, tmp_path / "cache", **{"train.batch_size": 4, "train.max_steps": 10, "train.ckpt_every": 1, "train.max_bad_steps": 2}
        ),
    )
    run = tmp_path / "run"
    with pytest.raises(
        TrainingDiverged, match="2 consecutive steps had a non-finite loss or gradient .*step 3.*last good checkpoint is kept"
    ):
        train(cfg, run)
    ck = run / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "step_0000001.pt", "step_0000002.pt"]
    s1, s2 = load_checkpoint(ck / "step_0000001.pt"), load_checkpoint(ck / "step_0000002.pt")
    assert (s1["skipped_steps"], s2["skipped_steps"]) == (0, 1)
    for part in ("model", "ema"):  # the skipped update changed nothing
        for k, v in s1[part].items():
            assert torch.isfinite(v).all() and torch.equal(v, s2[part][k]), (part, k)


def test_signals_finish_the_step_save_and_resume_exactly(
    one_thread: None, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    from ddpm.train import Trainer

    over = tiny_train_overrides(data_dir, tmp_path / "cache", **{"train.batch_size": 4, "train.max_steps": 6, "train.ckpt_every": 4})
    train(compose_config("train", over), tmp_path / "ref")
    step = Trainer.train_step

    def step_then_signal(self):
        out = step(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(SystemExit) as exc:
        train(compose_config("train", over), tmp_path / "run")
    assert exc.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    ck = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ck / "last.pt")["step"] == 3

    def step_then_two_sigints(self):  # the second Ctrl-C stops at once
        out = step(self)
        if self.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_two_sigints)
    with pytest.raises(SystemExit) as exc:
        train(compose_config("train", [*over, "resume=latest"]), tmp_path / "run")
    assert exc.value.code == 128 + signal.SIGINT
    assert "interrupted: stopped at step 5" in capfd.readouterr().err
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "step_0000003.pt", "step_0000004.pt"]
    assert load_checkpoint(ck / "last.pt")["step"] == 4
    monkeypatch.undo()
    train(compose_config("train", [*over, "resume=latest"]), tmp_path / "run")
    a, b = load_checkpoint(tmp_path / "ref/checkpoints/last.pt"), load_checkpoint(ck / "last.pt")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


# ---------------------------------------------------------------------------- the drill
@pytest.mark.slow
def test_fault_drill_quick(data_dir: Path, tmp_path: Path) -> None:
    """``scripts/fault_drill.py --quick``: real processes, every kind of fault once (4 SIGKILLs, 2 bad inputs), nothing lost."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fault_drill.py"), "--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path)],
        env={**os.environ, "DDPM_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["sigkills"] == res["planned_sigkills"] == 4
    kinds = {r["fault"]: r["runs"] for r in res["rows"]}
    # as root, a read-only folder needs a bind mount; where mounting is not allowed the drill reports the skip
    ro_done = not any("skipped" in n for r in res["rows"] if r["fault"] == "read-only checkpoint folder" for n in r["notes"])
    assert kinds == {
        "NaN losses": 1,
        "SIGKILL during training": 2,
        "SIGKILL during start-up": 1,
        "SIGKILL inside a checkpoint write": 1,
        "SIGTERM": 1,
        "SIGINT": 1,
        "second run on a live run directory": 1,
        "full disk": 1,
        "read-only checkpoint folder": 1 if (os.geteuid() != 0 or ro_done) else 0,
        "truncated newest checkpoint": 1,
        "garbage last.pt": 1,
        "last.pt carrying code": 1,
        "bad input": 2,
    }
    assert res["injected"] == res["survived"] == sum(kinds.values())
    assert res["checkpoints_lost"] == 0
    assert res["final_run"]["max_abs_weight_diff"] <= 1e-6
    assert proc.stdout.strip().splitlines()[-2] == f"{res['injected']} faults injected, {res['injected']} survived, 0 checkpoints lost"


def test_refused_resume_leaves_the_run_untouched(one_thread: None, tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """A resume that the checkpoints refuse changes nothing in the run directory (config record included)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_ckpt.parent.parent, run, ignore=shutil.ignore_patterns("tb", "samples"))
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    over = tiny_train_overrides(data_dir, tmp_path / "cache", **{"train.max_steps": 80, "model.channels": 8})
    with pytest.raises(CheckpointError, match="trained with another config: model.channels: checkpoint 16 vs now 8"):
        train(compose_config("train", [*over, "resume=latest"]), run)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".lock"}


# ---------------------------------------------------------------------------- outputs of the other commands
def run_with_file_limit(command: str, args: list[str], limit_bytes: int = 12_000) -> subprocess.CompletedProcess:
    """Run a ddpm command as a process whose files may not grow past ``limit_bytes`` (RLIMIT_FSIZE:
    the kernel's EFBIG where a full disk gives ENOSPC)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    exe = Path(sys.executable).parent / command
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, preexec_fn=limit, env=env)


def test_full_disk_during_sampling_is_one_line(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A write refused mid-run (RLIMIT_FSIZE: the kernel's EFBIG, where a full disk gives ENOSPC) ends
    ``ddpm-sample`` with one line; the files already in the run directory stay as they were."""

    run = tmp_path / "run"
    run.mkdir()
    (run / "earlier.txt").write_text("earlier output\n")

    # room for Hydra's config record, not for the first sample PNG
    proc = run_with_file_limit(
        "ddpm-sample", [f"ckpt={tiny_ckpt}", "num_samples=8", "sampler.steps=5", "progress=false", f"hydra.run.dir={run}"]
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: could not write into {run}: File too large; the files already in {run} are kept\n"
    assert (run / "earlier.txt").read_text() == "earlier output\n"


def test_full_disk_during_evaluation_keeps_earlier_outputs(tiny_ckpt: Path, data_dir: Path, tmp_path: Path) -> None:
    """A write refused while ``ddpm-evaluate`` saves its samples (RLIMIT_FSIZE, the kernel's EFBIG where a
    full disk gives ENOSPC) ends it with one line; the earlier outputs in the run directory, the
    ``samples.png`` whose new version could not be written included, stay byte for byte, and no torn
    or temp file is left."""

    run = tmp_path / "run"
    run.mkdir()
    rng = random.Random(0)
    earlier = {
        "earlier.txt": b"earlier output\n",
        "metrics.json": b'{"fid": 12.5, "num_samples": 1000}\n',
        "samples.png": bytes(rng.getrandbits(8) for _ in range(40_000)),  # larger than the limit: only read
        "samples.npz": bytes(rng.getrandbits(8) for _ in range(5_000)),
    }
    for name, data in earlier.items():
        (run / name).write_bytes(data)

    # room for Hydra's records and config.yaml, not for a grid of 64 noisy samples
    args = [f"ckpt={tiny_ckpt}", "metrics=[memorisation]", "num_samples=64", "sampler=ddim", "sampler.steps=3", "runtime.device=cpu"]
    args += [f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "progress=false", f"hydra.run.dir={run}"]
    args += ["overwrite=true"]  # replacing the earlier outputs is asked for; the write itself is refused
    proc = run_with_file_limit("ddpm-evaluate", args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: could not write into {run}: File too large; the files already in {run} are kept\n"
    for name, data in earlier.items():
        assert (run / name).read_bytes() == data, name
    assert sorted(p.name for p in run.iterdir()) == sorted([*earlier, ".hydra", "evaluate.log", "config.yaml"])
    assert f"ckpt: {tiny_ckpt}" in (run / "config.yaml").read_text()  # written whole before the refused write


def test_unwritable_run_dir_is_one_line(tmp_path: Path) -> None:
    """A ``hydra.run.dir`` that cannot be created is refused before Hydra writes (no traceback)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    exe = Path(sys.executable).parent / "ddpm-sample"
    proc = subprocess.run(
        [str(exe), "ckpt=/nonexistent/last.pt", f"hydra.run.dir={blocker / 'run'}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: cannot write into {blocker / 'run'}: Not a directory ({blocker}); choose another hydra.run.dir\n"
    assert blocker.read_text() == "not a folder\n"
