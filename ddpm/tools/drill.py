"""The fault drill's machinery (``scripts/fault_drill.py``): faults injected into real ``ddpm-train``
processes, the checks after each, and the table.

:class:`Drill` launches the installed console scripts (tiny U-Net, T=100, batch 4, MNIST, CPU, one
thread): SIGKILLs at random moments (start-up, training, inside a checkpoint write aimed with the
``DDPM_TEST_SLOW_WRITE`` testing hook), SIGTERM and SIGINT, corrupted newest checkpoints, a second
run on a live run directory, a full disk (``RLIMIT_FSIZE``) and a read-only checkpoint folder, all
into one chain of runs resumed with ``resume=latest`` (:func:`plan` orders them); NaN losses
(``DDPM_TEST_NONFINITE_STEPS``) in a run of their own; the bad inputs of :mod:`ddpm.tools.bad_inputs`;
and full disks while ``ddpm-sample`` and ``ddpm-evaluate`` write. :func:`run_drill` runs them all and
:func:`results` sums them up.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddpm.checkpoint import PARTIAL_RE, STEP_RE, find_latest, load_checkpoint
from ddpm.errors import CheckpointError
from ddpm.tools.bad_inputs import (
    BAD_INPUTS,
    QUICK_BAD,
    BadInput,
    Evil,
    bad_input_args,
    check_one_line,
    drill_train_overrides,
    make_bad_input_files,
)

BIN = Path(sys.executable).parent  # the installed console scripts
# A chain entry waiting for the next run that resumes: (fault, what its log must say, marker file of injected code).
Pending = list[tuple[str, str, Path | None]]


# ----------------------------------------------------------------------------- bookkeeping
@dataclass
class Row:
    """Results of one kind of fault."""

    fault: str
    runs: int = 0
    survived: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Proc:
    """A launched ``ddpm-train`` and the files its output goes to."""

    popen: subprocess.Popen
    out: Path
    err: Path
    started: float

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return -9

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def step_files(ckpt_dir: Path) -> dict[str, tuple[int, int]]:
    """Complete step checkpoints (final names only): name -> (step, inode)."""
    if not ckpt_dir.is_dir():
        return {}
    out = {}
    for p in ckpt_dir.iterdir():
        m = STEP_RE.match(p.name)
        if m:
            with contextlib.suppress(FileNotFoundError):  # rotated away meanwhile
                out[p.name] = (int(m.group(1)), p.stat().st_ino)
    return out


def partial_files(ckpt_dir: Path) -> set[str]:
    return {p.name for p in ckpt_dir.iterdir() if PARTIAL_RE.match(p.name)} if ckpt_dir.is_dir() else set()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


# Files the drill corrupts on purpose, as (inode, mtime, size): not losses until a run writes them
# anew (an inode alone could be reused by a later file).
INJECTED: set[tuple[int, int, int]] = set()


def _ident(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def verify(ckpt_dir: Path, before: dict[str, tuple[int, int]]) -> tuple[int, list[str]]:
    """(checkpoints lost, problems): every file of ``before`` and every final-named file must load."""
    problems, lost = [], 0
    now = {n: v for n, v in step_files(ckpt_dir).items() if _ident(ckpt_dir / n) not in INJECTED}
    before = {n: v for n, v in before.items() if n in now or _ident(ckpt_dir / n) not in INJECTED}
    for name in before:
        if name not in now:
            lost += 1
            problems.append(f"{name} disappeared")
    for name, (step, _) in now.items():
        try:
            state = load_checkpoint(ckpt_dir / name)
            if int(state["step"]) != step:
                raise CheckpointError(f"holds step {state['step']}")
        except CheckpointError as exc:
            lost += 1
            problems.append(f"{name}: {exc}")
    if (ckpt_dir / "last.pt").exists() and _ident(ckpt_dir / "last.pt") not in INJECTED:
        try:
            load_checkpoint(ckpt_dir / "last.pt")
        except CheckpointError as exc:
            lost += 1
            problems.append(f"last.pt: {exc}")
    if now:
        found = find_latest(ckpt_dir)
        newest = max(s for s, _ in now.values())
        if found is None or int(found[1]["step"]) != newest:
            problems.append(f"find_latest gave {None if found is None else found[1]['step']}, newest complete is {newest}")
    return lost, problems


def max_weight_diff(a: Path, b: Path) -> float:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    diffs = [(sa[part][k].double() - sb[part][k].double()).abs().max().item() for part in ("model", "ema") for k in sa[part]]
    return max(diffs)


# ----------------------------------------------------------------------------- the drill
class Drill:
    """Runs the faults and keeps the table.

    Args:
        work: scratch folder for all run directories.
        data_dir: the data root holding ``MNIST/raw``.
        quick: the short version (each fault once: 4 kills; 2 bad inputs as processes).
        seed: seeds the random kill times.
    """

    def __init__(self, work: Path, data_dir: Path, quick: bool, seed: int) -> None:
        self.work, self.data_dir, self.quick = work, data_dir, quick
        self.rng = random.Random(seed)
        self.rows: dict[str, Row] = {}
        self.launches = 0
        self.lock = threading.Lock()  # the NaN run and the bad inputs run beside the chain, in a thread
        self.env = {
            **os.environ,
            "DDPM_DATA_DIR": str(data_dir),
            "DDPM_CACHE_DIR": str(work / "cache"),
            "OMP_NUM_THREADS": "1",  # the same arithmetic in every run, and gentle on shared machines
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",  # logs survive SIGKILL
        }
        for hook in ("DDPM_TEST_SLOW_WRITE", "DDPM_TEST_NONFINITE_STEPS"):
            self.env.pop(hook, None)
        self.ckpt_every = 2
        self.max_steps = 0
        self.interval = 1.0  # seconds per checkpoint interval, measured by the reference run
        self.startup = 5.0  # seconds from launch to the first checkpoint, measured too
        self.final: dict[str, Any] = {"max_abs_weight_diff": float("nan")}

    def row(self, fault: str) -> Row:
        return self.rows.setdefault(fault, Row(fault))

    def record(self, fault: str, ok: bool, lost: int = 0, note: str = "") -> None:
        with self.lock:
            r = self.row(fault)
            r.runs += 1
            r.survived += int(ok and lost == 0)
            r.lost += lost
            if note:
                r.notes.append(note)
            status = "ok  " if ok and lost == 0 else "FAIL"
            print(f"  [{status}] {fault}: {note}", flush=True)

    def launch(
        self,
        run_dir: Path,
        extra: list[str] = (),
        env: dict[str, str] | None = None,
        preexec: Callable | None = None,
        cmd: str = "ddpm-train",
        base: bool = True,
    ) -> Proc:
        with self.lock:
            self.launches += 1
            n = self.launches
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        out, err = logs / f"{n:03d}.out", logs / f"{n:03d}.err"
        args = [str(BIN / cmd)]
        if base:
            args += drill_train_overrides(
                self.data_dir,
                self.work / "cache",
                **{"train.max_steps": self.max_steps, "train.ckpt_every": self.ckpt_every, "train.keep_checkpoints": 100000},
            )
            args.append(f"hydra.run.dir={run_dir}")
        args += list(extra)
        with out.open("w") as fo, err.open("w") as fe:
            p = subprocess.Popen(args, stdout=fo, stderr=fe, env={**self.env, **(env or {})}, preexec_fn=preexec)
        return Proc(p, out, err, time.time())

    def wait_new_checkpoint(self, proc: Proc, ckpt_dir: Path, before: dict[str, tuple[int, int]], timeout: float = 300) -> bool:
        """Wait until ``proc`` wrote a step checkpoint that was not in ``before`` (i.e. it is training)."""
        end = time.time() + timeout
        while time.time() < end and proc.popen.poll() is None:
            now = step_files(ckpt_dir)
            if any(before.get(n) != v for n, v in now.items()):
                return True
            time.sleep(0.02)
        return False

    def wait_random(self, proc: Proc, ckpt_dir: Path, span: float) -> None:
        """Sleep a random part of ``span`` seconds, but no longer than 2 more checkpoints of ``proc``
        (the pace of a shared machine changes: the run must not reach its end)."""
        deadline = time.time() + self.rng.uniform(0, span)
        newest = lambda: max((s for s, _ in step_files(ckpt_dir).values()), default=0)  # noqa: E731
        limit = newest() + 2 * self.ckpt_every
        while time.time() < deadline and proc.popen.poll() is None and newest() < limit:
            time.sleep(0.005)

    # ------------------------------------------------------------------ reference
    def reference(self) -> Path:
        run = self.work / "reference"
        t0 = time.time()
        p = self.launch(run, ["resume=latest"])
        first = None
        while p.popen.poll() is None:
            if first is None and step_files(run / "checkpoints"):
                first = time.time() - t0
            time.sleep(0.02)
        total = time.time() - t0
        if p.popen.returncode != 0:
            sys.exit(f"reference run failed (exit {p.popen.returncode}): {p.stderr[-2000:]}")
        first = first or total
        self.startup = first
        self.interval = max(0.05, (total - first) / max(1, self.max_steps // self.ckpt_every - 1))
        print(
            f"reference run: {self.max_steps} steps in {total:.1f} s (first checkpoint after {first:.1f} s, {self.interval:.2f} s per checkpoint interval)",
            flush=True,
        )
        return run / "checkpoints" / "last.pt"

    # ------------------------------------------------------------------ the chain
    def chain_step(self, fault: str, run: Path, pending: Pending) -> None:
        """Inject one fault into the chain run directory ``run``.

        Args:
            fault: the fault's name (one of :func:`plan`'s).
            run: the chain's run directory.
            pending: corruptions waiting for the next run that resumes (appended to, settled here).
        """
        ck = run / "checkpoints"
        before = step_files(ck)
        if fault in CORRUPTIONS:
            self.corrupt(fault, ck, before, pending)
        elif fault.startswith("SIGKILL"):
            self.sigkill(fault, run, before, pending)
        elif fault in ("SIGTERM", "SIGINT"):
            self.stop_signal(fault, run, before, pending)
        elif fault == "second run on a live run directory":
            self.second_run(fault, run, before, pending)
        elif fault in ("full disk", "read-only checkpoint folder"):
            self.refused_write(fault, run, before, pending)
        else:
            raise ValueError(fault)

    def corrupt(self, fault: str, ck: Path, before: dict[str, tuple[int, int]], pending: Pending) -> None:
        """Tear, replace or poison the newest checkpoint; the next run that resumes must skip it.

        Args:
            fault: one of :data:`CORRUPTIONS`.
            ck: the chain's checkpoint folder.
            before: its complete step checkpoints now (:func:`step_files`).
            pending: where the expectation on the next run goes.
        """
        # the run that resumes next skips the files corrupted earlier too (two corruptions may
        # follow each other without a new checkpoint in between)
        good = {n: v for n, v in before.items() if _ident(ck / n) not in INJECTED}
        if len(good) < 2:
            return
        newest = max(good, key=lambda n: good[n][0])
        if fault == "truncated newest checkpoint":
            path = ck / newest
            size = path.stat().st_size
            with path.open("r+b") as f:  # in place: last.pt, a hard link to it, is torn too
                f.truncate(size // 2)
            INJECTED.add(_ident(path))
            second = sorted(good, key=lambda n: good[n][0])[-2]
            pending.append((fault, f"resumed from {ck / second} at step {good[second][0]}", None))
        elif fault == "garbage last.pt":
            (ck / "last.pt").unlink(missing_ok=True)
            (ck / "last.pt").write_bytes(os.urandom(4096))
            INJECTED.add(_ident(ck / "last.pt"))
            pending.append((fault, f"resumed from {ck / newest} at step {before[newest][0]}", None))
        else:
            (ck / "last.pt").unlink(missing_ok=True)
            marker = self.work / "EXECUTED_chain"
            torch.save(Evil(marker), ck / "last.pt")
            INJECTED.add(_ident(ck / "last.pt"))
            pending.append((fault, f"resumed from {ck / newest} at step {before[newest][0]}", marker))

    def settle(self, proc: Proc, pending: Pending) -> None:
        """Record the pending corruptions by the log of ``proc``, the next run that resumed.

        Args:
            proc: a finished run of the chain.
            pending: the corruptions it should have skipped (cleared once recorded).
        """
        if "resumed from" not in proc.stdout:  # killed before it resumed: the next run shows it
            return
        for name, expect, marker in pending:
            ok = expect in proc.stdout and "skipping checkpoint" in proc.stdout
            executed = marker is not None and marker.exists()
            self.record(
                name,
                ok and not executed,
                note=("code executed! " if executed else "")
                + (f"next run: {expect}" if ok else f"expected '{expect}' in the next run's log"),
            )
        pending.clear()

    def sigkill(self, fault: str, run: Path, before: dict[str, tuple[int, int]], pending: Pending) -> None:
        """SIGKILL a resumed run during start-up, during training or inside a checkpoint write.

        Args:
            fault: ``SIGKILL during start-up``, ``SIGKILL during training`` or ``SIGKILL inside a checkpoint write``.
            run: the chain's run directory.
            before: its complete step checkpoints before the run.
            pending: corruptions this run settles.
        """
        ck = run / "checkpoints"
        env = {"DDPM_TEST_SLOW_WRITE": "1.0"} if fault == "SIGKILL inside a checkpoint write" else None
        p = self.launch(run, ["resume=latest"], env=env)
        stale = partial_files(ck)
        if fault == "SIGKILL during start-up":  # at a random time, at the latest when training starts
            self.wait_new_checkpoint(p, ck, before, timeout=self.rng.uniform(0.2, max(0.3, self.startup * 0.9)))
        elif fault == "SIGKILL inside a checkpoint write":
            end = time.time() + 300
            while time.time() < end and p.popen.poll() is None and not any(_size(ck / n) > 0 for n in partial_files(ck) - stale):
                time.sleep(0.005)
        else:
            self.wait_new_checkpoint(p, ck, before)
            self.wait_random(p, ck, 2 * self.interval)
        snap = step_files(ck)  # complete before the kill
        if p.popen.poll() is not None:
            self.record(fault, False, note=f"run ended (exit {p.popen.returncode}) before the kill: {p.stderr.strip()[-200:]}")
            return
        os.kill(p.popen.pid, signal.SIGKILL)
        p.wait()
        target = partial_files(ck) - stale
        lost, problems = verify(ck, snap)
        self.settle(p, pending)
        newest = max((s for s, _ in step_files(ck).values()), default=0)
        where = (
            "inside a checkpoint write (torn temp file left)" if target else ("before training" if snap == before else "outside a write")
        )
        self.record(
            fault,
            not problems,
            lost,
            f"killed {time.time() - p.started:.1f} s after launch, {where}; newest step {newest}" + (f"; {problems}" if problems else ""),
        )

    def stop_signal(self, fault: str, run: Path, before: dict[str, tuple[int, int]], pending: Pending) -> None:
        """SIGTERM or SIGINT during training: the run stops after its step, saves it and exits 128 + signal.

        Args:
            fault: ``SIGTERM`` or ``SIGINT``.
            run: the chain's run directory.
            before: its complete step checkpoints before the run.
            pending: corruptions this run settles.
        """
        ck = run / "checkpoints"
        sig = signal.SIGTERM if fault == "SIGTERM" else signal.SIGINT
        p = self.launch(run, ["resume=latest"])
        self.wait_new_checkpoint(p, ck, before)
        self.wait_random(p, ck, self.interval)
        snap = step_files(ck)
        os.kill(p.popen.pid, sig)
        rc = p.wait()
        self.settle(p, pending)
        m = re.search(rf"received {sig.name}: stopped after step (\d+)", p.stderr)
        lost, problems = verify(ck, snap)
        last_step = int(load_checkpoint(ck / "last.pt")["step"]) if (ck / "last.pt").exists() else -1
        ok = rc == 128 + sig and m is not None and last_step == int(m.group(1)) and not problems
        self.record(
            fault,
            ok,
            lost,
            f"exit {rc}, stderr {p.stderr.strip().splitlines()[-1:]!r}, last.pt at step {last_step}"
            + (f"; {problems}" if problems else ""),
        )

    def second_run(self, fault: str, run: Path, before: dict[str, tuple[int, int]], pending: Pending) -> None:
        """A second ``ddpm-train`` on the run directory of a live one is refused in one line.

        Args:
            fault: the fault's name.
            run: the chain's run directory.
            before: its complete step checkpoints before the runs.
            pending: corruptions the first run settles.
        """
        ck = run / "checkpoints"
        # The first run holds the lock while paused inside its first checkpoint write (however
        # fast the machine, it cannot finish before the second run has started).
        a = self.launch(run, ["resume=latest"], env={"DDPM_TEST_SLOW_WRITE": "3600"})
        stale = partial_files(ck)
        end = time.time() + 600
        while time.time() < end and a.popen.poll() is None and not any(_size(ck / n) > 0 for n in partial_files(ck) - stale):
            time.sleep(0.01)
        b = self.launch(run, ["resume=latest"])
        rc_b = b.wait()
        self.settle(a, pending)
        why = check_one_line(rc_b, b.stderr, "another ddpm-train process is running")
        alive = a.popen.poll() is None
        snap = step_files(ck)
        if alive:
            os.kill(a.popen.pid, signal.SIGKILL)  # the next chain step then shows the lock was released
        a.wait()
        lost, problems = verify(ck, snap)
        self.record(
            fault,
            why is None and alive and not problems,
            lost,
            f"second run: exit {rc_b}, {b.stderr.strip()!r}; first run still training: {alive}"
            + (f"; {why}" if why else "")
            + (f"; {problems}" if problems else ""),
        )

    def refused_write(self, fault: str, run: Path, before: dict[str, tuple[int, int]], pending: Pending) -> None:
        """A full disk or a read-only checkpoint folder: one line, exit 2, no partial file, nothing lost.

        Args:
            fault: ``full disk`` or ``read-only checkpoint folder``.
            run: the chain's run directory.
            before: its complete step checkpoints before the run.
            pending: corruptions this run settles.
        """
        ck = run / "checkpoints"
        undo: Callable[[], None] = lambda: None  # noqa: E731
        preexec = None
        if fault == "full disk":
            limit = min(p.stat().st_size for p in ck.glob("step_*.pt")) // 2

            def preexec() -> None:  # the kernel refuses writes past this size (EFBIG), like a full disk
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        else:
            made = make_read_only(ck)
            if made is None:
                self.row(fault).notes.append("skipped: cannot make a folder read-only here")
                print(f"  [skip] {fault}: cannot make a folder read-only here", flush=True)
                return
            undo = made
        stale = partial_files(ck)  # torn files of an earlier kill stay in a read-only folder
        try:
            p = self.launch(run, ["resume=latest"], preexec=preexec)
            rc = p.wait()
        finally:
            undo()
        self.settle(p, pending)
        why = check_one_line(rc, p.stderr, "could not write checkpoint")
        lost, problems = verify(ck, before)
        left = partial_files(ck) - stale
        ok = why is None and not problems and not left
        self.record(
            fault,
            ok,
            lost,
            f"exit {rc}, {p.stderr.strip()!r}"
            + (f"; {why}" if why else "")
            + (f"; partial files left: {left}" if left else "")
            + (f"; {problems}" if problems else ""),
        )

    def chain(self, plan: list[str], reference: Path) -> None:
        run = self.work / "chain"
        pending: Pending = []
        # A first run that gets killed once training started: the chain needs checkpoints to lose.
        for fault in plan:
            self.chain_step(fault, run, pending)
        final = self.launch(run, ["resume=latest"])
        rc = final.wait()
        for name, expect, marker in pending:
            ok = expect in final.stdout and not (marker is not None and marker.exists())
            self.record(name, ok, note=f"next run: {expect}")
        ck = run / "checkpoints"
        lost, problems = verify(ck, step_files(ck))
        diff = max_weight_diff(reference, ck / "last.pt") if rc == 0 else float("inf")
        left = partial_files(ck)
        self.final = {"exit": rc, "max_abs_weight_diff": diff, "problems": problems, "partial_files_left": sorted(left)}
        print(
            f"final resumed run: exit {rc}, max |weights - uninterrupted weights| = {diff:.3g} (model and EMA)"
            + (f"; {problems}" if problems else ""),
            flush=True,
        )
        if rc != 0 or diff > 1e-6 or problems or left:
            with self.lock:  # the chain's faults only count as survived if the run ends right
                for r in self.rows.values():
                    if r.fault not in ("NaN losses", "bad input"):
                        r.survived = 0
            print(f"  chain FAILED: {final.stderr.strip()[-500:]} {left}", flush=True)

    # ------------------------------------------------------------------ NaN
    def nan(self) -> None:
        """NaN at steps 3-4 (skipped, recovered) and from step 9 on: stops after 3 bad steps in a row."""
        run = self.work / "nan"
        p = self.launch(run, ["train.max_bad_steps=3"], env={"DDPM_TEST_NONFINITE_STEPS": "3-4,9-"})
        rc = p.wait()
        why = check_one_line(rc, p.stderr, "3 consecutive steps had a non-finite loss")
        ck = run / "checkpoints"
        found = step_files(ck)
        lost, problems = verify(ck, found)
        expected = {2: 0, 4: 1, 6: 2, 8: 2, 10: 3}  # skipped updates before each checkpoint
        got = {}
        for name, (step, _) in found.items():
            s = load_checkpoint(ck / name)
            finite = all(torch.isfinite(t).all() for t in s["model"].values())
            got[step] = int(s["skipped_steps"]) if finite else "non-finite weights"
        ok = why is None and got == expected and not problems
        self.record(
            "NaN losses",
            ok,
            lost,
            f"exit {rc}, {p.stderr.strip()!r}; skipped steps per checkpoint {got}"
            + (f" (expected {expected})" if got != expected else "")
            + (f"; {why}" if why else ""),
        )

    # ------------------------------------------------------------------ bad input
    def bad_inputs(self, ckpt: Path) -> None:
        files = self.work / "bad_input"
        make_bad_input_files(files, ckpt)
        cases = [c for c in BAD_INPUTS if not self.quick or c.name in QUICK_BAD]
        cases = [c for c in cases if (BIN / c.cmd).exists()]
        running: list[tuple[BadInput, Proc]] = []
        for i, case in enumerate(cases):
            args = bad_input_args(case, files, ckpt, files / "runs" / f"{i:02d}", self.data_dir)
            running.append((case, self.launch(Path(), args, env=case.env, cmd=case.cmd, base=False)))
            if len(running) == 4 or i == len(cases) - 1:  # four at a time
                for c, p in running:
                    rc = p.wait()
                    why = check_one_line(rc, p.stderr, c.expect)
                    executed = (files / "EXECUTED").exists()
                    self.record(
                        "bad input",
                        why is None and not executed,
                        note=f"{c.cmd} {c.name}: exit {rc}, {p.stderr.strip()!r}"
                        + (f"; {why}" if why else "")
                        + ("; CODE EXECUTED" if executed else ""),
                    )
                running.clear()

    # ------------------------------------------------------------------ outputs of the other commands
    def output_faults(self, ckpt: Path) -> None:
        """A full disk (``RLIMIT_FSIZE``) while ``ddpm-sample`` / ``ddpm-evaluate`` write their image grid
        into a run directory holding earlier files: one line, exit 2, the earlier files byte for byte,
        no temp file left. ``ddpm-evaluate`` is asked to replace its earlier ``samples.png`` and
        ``metrics.json`` (``overwrite=true``) and writes through temp files, so the earlier files (whose
        new versions are refused) stay; for ``ddpm-sample`` only a foreign file is there."""
        rng = random.Random(1)
        grid = bytes(rng.getrandbits(8) for _ in range(40_000))
        cases = {
            "full disk during ddpm-sample": ("ddpm-sample", ["num_samples=64"], {"earlier.txt": b"earlier output\n"}),
            "full disk during ddpm-evaluate": (
                "ddpm-evaluate",
                ["num_samples=64", "metrics=[memorisation]", "overwrite=true"],
                {"earlier.txt": b"earlier output\n", "samples.png": grid, "metrics.json": b'{"fid": 12.5}\n'},
            ),
        }

        def preexec() -> None:  # room for Hydra's records, not for a grid of 64 noisy samples
            resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, resource.RLIM_INFINITY))

        running = []
        for fault, (cmd, extra, earlier) in cases.items():
            run = self.work / "outputs" / cmd
            run.mkdir(parents=True, exist_ok=True)
            for name, data in earlier.items():
                (run / name).write_bytes(data)
            args = [f"ckpt={ckpt}", "sampler=ddim", "sampler.steps=3", "progress=false", "runtime.device=cpu", *extra]
            args += [f"paths.data_dir={self.data_dir}", f"paths.cache_dir={self.work / 'cache'}", f"hydra.run.dir={run}"]
            running.append((fault, run, earlier, self.launch(run, args, preexec=preexec, cmd=cmd, base=False)))
        for fault, run, earlier, p in running:
            rc = p.wait()
            why = check_one_line(rc, p.stderr, f"could not write into {run}: File too large")
            changed = [n for n, data in earlier.items() if (run / n).read_bytes() != data]
            temp = [q.name for q in run.iterdir() if q.name.endswith(".tmp")]
            self.record(
                fault,
                why is None and not changed and not temp,
                note=f"exit {rc}, {p.stderr.strip()!r}"
                + (f"; {why}" if why else "")
                + (f"; earlier files changed: {changed}" if changed else "")
                + (f"; temp files left: {temp}" if temp else ""),
            )


def source_digest() -> str:
    """A digest of the installed ``ddpm`` package's Python files (to notice edits during a drill)."""
    import hashlib

    import ddpm

    h = hashlib.sha256()
    for p in sorted(Path(ddpm.__file__).parent.rglob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def make_read_only(path: Path) -> Callable[[], None] | None:
    """Make ``path`` unwritable; returns the undo, or None when that is impossible here."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    # root ignores permission bits: a read-only bind mount of the folder onto itself instead
    if shutil.which("mount") is None:
        return None
    ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode == 0:
        return lambda: subprocess.run(["umount", str(path)], check=True)
    if ok:
        subprocess.run(["umount", str(path)])
    return None


CORRUPTIONS = ("truncated newest checkpoint", "garbage last.pt", "last.pt carrying code")


def plan(quick: bool, rng: random.Random) -> list[str]:
    """The chain's faults in order: a shuffled pool, a run that trains first (to have checkpoints),
    and each file corruption placed before a run that resumes (which must skip the bad file)."""
    # quick: every kind of fault once (the first training kill is the chain's start), for the test suite
    n_start, n_train, n_write = (1, 2, 1) if quick else (2, 6, 4)
    pool = (
        ["SIGKILL during start-up"] * n_start
        + ["SIGKILL during training"] * (n_train - 1)
        + ["SIGKILL inside a checkpoint write"] * n_write
    )
    pool += ["SIGTERM", "SIGINT", "second run on a live run directory", "full disk", "read-only checkpoint folder"]
    rng.shuffle(pool)
    steps = ["SIGKILL during training", *pool]
    for k, fault in enumerate(CORRUPTIONS):
        pos = max(3, (k + 1) * len(steps) // (len(CORRUPTIONS) + 1))
        while pos < len(steps) and (steps[pos] == "SIGKILL during start-up" or steps[pos] in CORRUPTIONS or steps[pos - 1] in CORRUPTIONS):
            pos += 1
        steps.insert(pos, fault)  # at the end, the final run is the one that resumes
    return steps


def run_drill(work: Path, data_dir: Path, quick: bool, seed: int) -> tuple[Drill, list[str]]:
    """Run the whole drill in ``work``: the reference, the chain (with the NaN run, and in quick mode
    the bad inputs, beside it), then in full mode the bad inputs and the outputs' full disks.

    Args:
        work: scratch folder for every run directory.
        data_dir: the data root holding ``MNIST/raw``.
        quick: each fault once (4 SIGKILLs, 2 bad inputs as processes), for the test suite.
        seed: seeds the plan and the random kill times.

    Returns:
        The drill (its rows and final run) and the chain's plan.
    """
    drill = Drill(work, data_dir, quick, seed)
    steps = plan(quick, drill.rng)
    drill.max_steps = 5 * len(steps) + 20
    print(f"fault drill ({'quick' if quick else 'full'}), work folder {work}", flush=True)
    ref = drill.reference()
    # The chain's runs are single-threaded: the NaN run (and in quick mode the bad inputs, two
    # processes) use the second core meanwhile, in their own run directories.
    failed: list[BaseException] = []

    def beside() -> None:
        try:
            drill.nan()
            if quick:
                drill.bad_inputs(ref)
        except BaseException as exc:  # raised again in the main thread
            failed.append(exc)

    side = threading.Thread(target=beside)
    side.start()
    try:
        drill.chain(steps, ref)
    finally:
        side.join()
    if failed:
        raise failed[0]
    if not quick:
        drill.bad_inputs(ref)
        drill.output_faults(ref)
    return drill, steps


def results(drill: Drill, steps: list[str], quick: bool, command: str, elapsed: float) -> dict[str, Any]:
    """The drill's results JSON: totals, the final run and one row per kind of fault.

    Args:
        drill: a drill that ran.
        steps: the chain's plan (its SIGKILLs are the planned ones).
        quick: whether it was the quick drill.
        command: the invocation (``"command"``, which the docs' tables show).
        elapsed: wall seconds of the whole drill.
    """
    rows = list(drill.rows.values())
    return {
        "mode": "quick" if quick else "full",
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "seconds": round(elapsed, 1),
        "injected": sum(r.runs for r in rows),
        "survived": sum(r.survived for r in rows),
        "checkpoints_lost": sum(r.lost for r in rows),
        "sigkills": sum(r.runs for r in rows if r.fault.startswith("SIGKILL")),
        "planned_sigkills": sum(f.startswith("SIGKILL") for f in steps),
        "final_run": drill.final,
        "rows": [asdict(r) for r in rows],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The ``fault | runs | survived | checkpoints lost`` table of the results' rows."""
    width = max(len(r["fault"]) for r in rows)
    lines = [f"| {'fault':{width}} | runs | survived | checkpoints lost |", f"|{'-' * (width + 2)}|------|----------|------------------|"]
    lines += [f"| {r['fault']:{width}} | {r['runs']:4d} | {r['survived']:8d} | {r['lost']:16d} |" for r in rows]
    return "\n".join(lines)
