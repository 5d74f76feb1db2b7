"""ddpm-dashboard: the path guard, run discovery, config checks, launch/stop/resume, sampling, and
every page through Streamlit's AppTest."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from conftest import tiny_train_overrides
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from ddpm.dashboard import cli, launch, runs, sampling  # noqa: E402
from ddpm.dashboard.paths import inside  # noqa: E402
from ddpm.errors import ConfigError  # noqa: E402

VIEWS = Path(launch.__file__).with_name("views")


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def fake_run(root: Path, name: str = "train/r1", steps: tuple[int, ...] = (5, 10), max_steps: int = 40) -> Path:
    """A training run's files as ddpm-train lays them out (log, config, one grid, one checkpoint name)."""
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text(f"train:\n  max_steps: {max_steps}\nmodel:\n  name: tiny\n")
    lines = [f"[2026-01-01 00:00:0{i}][ddpm.train][INFO] - step {s} loss {1.0 / s:.5f} grad_norm 1.0 lr 1e-3" for i, s in enumerate(steps)]
    (run / "train.log").write_text("\n".join(["[x][ddpm.train][INFO] - ddpm 0.1.0", *lines]) + "\n")
    Image.new("L", (20, 20), 200).save(run / "samples" / f"step_{steps[-1]:07d}.png")
    (run / "checkpoints" / f"step_{steps[0]:07d}.pt").write_bytes(b"")
    return run


def app(view: str, root: Path) -> AppTest:
    at = AppTest.from_file(str(VIEWS / f"{view}.py"), default_timeout=120)
    at.session_state["outputs_root"] = str(root)
    return at.run()


# --- paths ---


def test_inside_keeps_every_path_in_the_root(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    (root / "train" / "a").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    assert inside(root, "train/a") == (root / "train" / "a").resolve()
    assert inside(root, root / "train") == (root / "train").resolve()
    assert inside(root, ".") == root.resolve()
    assert inside(root, "train/../train/a") == (root / "train" / "a").resolve()
    for bad in ("..", "../secret", "train/../../secret", str(outside), "/etc/passwd", "train/a\x00"):
        with pytest.raises(ConfigError, match="refused path"):
            inside(root, bad)
    (root / "escape").symlink_to(outside)
    (root / "alias").symlink_to(root / "train")
    with pytest.raises(ConfigError, match="outside the outputs root"):
        inside(root, "escape")
    with pytest.raises(ConfigError, match="outside the outputs root"):
        inside(root, "escape/file.pt")
    assert inside(root, "alias/a") == (root / "train" / "a").resolve()


# --- runs ---


def test_runs_report_step_loss_grid_and_status(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    found = runs.find_runs(tmp_path)
    assert [r.name for r in found] == ["train/r1"]
    r = found[0]
    assert (r.status, r.step, r.max_steps) == ("stopped", 10, 40)
    assert [p.name for p in r.grids] == ["step_0000010.png"]
    assert [p.name for p in r.checkpoints] == ["step_0000005.pt"]
    assert runs.loss_curve(run) == [(5, 0.2), (10, 0.1)]
    (run / "metrics.json").write_text("{}")
    assert runs.run_info(tmp_path, "train/r1").status == "finished"
    # an evaluation folder is not a training run, and its metrics.json is a result
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"fid": {"value": 12.5, "n": 100}, "config": {"x": 1}, "list": [1]}))
    assert [r.name for r in runs.find_runs(tmp_path)] == ["train/r1"]
    assert runs.results(tmp_path, "metrics.json") == [("eval", {"fid.value": 12.5, "fid.n": 100})]
    with pytest.raises(ConfigError):
        runs.run_info(tmp_path, "../elsewhere")


def test_loss_curve_falls_back_to_tensorboard(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with SummaryWriter(str(run / "tb")) as w:
        for step, loss in ((3, 0.75), (6, 0.5)):
            w.add_scalar("train/loss", loss, step)
    assert runs.loss_curve(run) == [(3, 0.75), (6, 0.5)]
    assert runs.run_info(tmp_path, "run").step == 6


def test_runs_skip_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    root.mkdir()
    fake_run(tmp_path / "other")
    (root / "link").symlink_to(tmp_path / "other" / "train")
    (root / "table.csv").symlink_to(tmp_path / "other" / "train" / "r1" / "config.yaml")
    assert runs.find_runs(root) == []
    assert runs.files(root, "*.csv") == []
    # inside a real run: a grid, checkpoint or log that links out of the root is not read
    run = fake_run(root)
    secret = tmp_path / "secret.png"
    Image.new("L", (4, 4)).save(secret)
    (run / "samples" / "step_0000099.png").symlink_to(secret)
    (run / "checkpoints" / "last.pt").symlink_to(secret)
    (run / "launch.log").symlink_to(secret)
    info = runs.run_info(root, "train/r1")
    assert [p.name for p in info.grids] == ["step_0000010.png"]
    assert [p.name for p in info.checkpoints] == ["step_0000005.pt"]
    assert runs.tail(run / "launch.log") == ""


def budget_run(root: Path, name: str = "train/qs", finished: bool = True) -> Path:
    """A run of experiment=quickstart's shape: max_steps 1000000, ended by train.time_budget_min 4.5."""
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("train:\n  max_steps: 1000000\n  time_budget_min: 4.5\n")
    (run / "train.log").write_text(
        "[2026-01-01 10:00:00,000][ddpm.train][INFO] - ddpm 0.1.0\ndataset mnist: 60000 images\n"
        "[2026-01-01 10:02:00,000][ddpm.train][INFO] - step 5000 loss 0.03 grad_norm 0.1 lr 1e-3 img/s 140.0 max_rss_mib 900\n"
        "[2026-01-01 10:04:30,000][ddpm.train][INFO] - step 10236 loss 0.02 grad_norm 0.1 lr 0 img/s 142.4 max_rss_mib 900\n"
    )
    if finished:
        (run / "metrics.json").write_text(json.dumps({"step": 10236, "train_seconds": 270.3}))
    return run


def test_progress_of_time_budget_and_step_bounded_runs(tmp_path: Path) -> None:
    budget_run(tmp_path)
    r = runs.run_info(tmp_path, "train/qs")
    assert (r.status, r.step, r.time_budget_min, r.elapsed_s, r.images_per_s) == ("finished", 10236, 4.5, 270.3, 142.4)
    assert r.progress == (1.0, "4.5 / 4.5 min of the time budget · step 10236 · 142 img/s")
    assert r.progress_short == "4.5 / 4.5 min" and "1000000" not in r.progress[1]
    # not finished yet: the time between train.log's first and last lines of each start
    budget_run(tmp_path, "train/qs2", finished=False)
    r = runs.run_info(tmp_path, "train/qs2")
    assert (r.status, r.elapsed_s) == ("stopped", 270.0)
    assert r.progress == (pytest.approx(270 / 270), "4.5 / 4.5 min of the time budget · step 10236 · 142 img/s")
    log = (tmp_path / "train/qs2/train.log").read_text()
    resumed = log + "[2026-01-01 11:00:00,000][ddpm.train][INFO] - ddpm 0.1.0\n[2026-01-01 11:00:30,500][ddpm.train][INFO] - x\n"
    assert runs.logged_seconds(resumed) == 300.5  # 270 s, then 30.5 s after the restart (the hour between is not training)
    now = datetime(2026, 1, 1, 11, 1, 0).timestamp()
    assert runs.logged_seconds(resumed, live=True, now=now) == 330.0  # a live run counts up to now
    assert runs.logged_seconds("no stamps\n") is None
    # a step-bounded run: steps of max_steps, as before
    fake_run(tmp_path)
    r = runs.run_info(tmp_path, "train/r1")
    assert r.time_budget_min is None and r.progress == (0.25, "step 10 / 40") and r.progress_short == "10 / 40 steps"


def test_failed_start_is_told_from_a_stop(tmp_path: Path) -> None:
    run = fake_run(tmp_path, steps=(5,))
    log = run / runs.LAUNCH_LOG
    cmd = "$ python -m ddpm.train dataset=cifar10\n"
    cases = [
        (
            cmd + "error: CIFAR-10 dataset not found: looked for /d\n" + runs.EXIT_LINE.format(2),
            "failed",
            "CIFAR-10 dataset not found: looked for /d",
        ),
        (cmd + "received SIGTERM: stopped after step 5\n" + runs.EXIT_LINE.format(143), "stopped", ""),
        (cmd + runs.EXIT_LINE.format(-9), "failed", "ddpm-train was killed by SIGKILL"),
        (cmd + "Traceback (most recent call last):\n  File x\nRuntimeError: out of memory\n", "failed", "RuntimeError: out of memory"),
        (cmd + "error: old\n" + runs.EXIT_LINE.format(2) + "\n" + cmd, "stopped", ""),  # restarted since: not failed
        (cmd, "stopped", ""),  # starting, or stopped with no trace
    ]
    for text, status, error in cases:
        log.write_text(text + "\n")
        r = runs.run_info(tmp_path, "train/r1")
        assert (r.status, r.error) == (status, error), text


def test_runs_named_like_a_runs_own_folders_are_found(tmp_path: Path) -> None:
    for name in ("tb", "samples", "images"):
        fake_run(tmp_path, f"train/{name}")
    fake_run(tmp_path, "mnist/samples/deep")
    nested = tmp_path / "train" / "tb" / "samples" / "not-a-run"  # inside a run: its own folders are not walked
    (nested / "checkpoints").mkdir(parents=True)
    fake_run(tmp_path, "archive/train/old")
    assert sorted(r.name for r in runs.find_runs(tmp_path)) == [
        "mnist/samples/deep",
        "train/images",
        "train/samples",
        "train/tb",
    ]


def test_checkpoints_count_once_and_list_the_most_trained_first(tmp_path: Path) -> None:
    a = fake_run(tmp_path, "train/a", steps=(10, 20))
    ckpt = a / "checkpoints"
    (ckpt / "step_0000020.pt").write_bytes(b"20")
    os.link(ckpt / "step_0000020.pt", ckpt / "last.pt")  # as ddpm-train writes it
    (ckpt / "best.pt").write_bytes(b"b")
    with open(a / "train.log", "a") as f:
        f.write("[2026-01-01 00:00:09,000][ddpm.train][INFO] - best.pt: FID 12.345 at step 10\n")
    b = fake_run(tmp_path, "train/b", steps=(5,))
    (b / "checkpoints" / "last.pt").write_bytes(b"copy")  # a copy (no hard links): its step from train.log
    with open(b / "train.log", "a") as f:
        f.write(f"[2026-01-01 00:00:09,000][ddpm.train][INFO] - checkpoint {b}/checkpoints/step_0000005.pt\n")
    os.utime(b, (time.time() + 60, time.time() + 60))  # b is the newer run
    info = runs.run_info(tmp_path, "train/a")
    assert [p.name for p in info.checkpoints] == ["last.pt", "best.pt", "step_0000020.pt", "step_0000010.pt"]
    assert info.checkpoint_count() == 3  # last.pt is step_0000020.pt
    choices = runs.checkpoint_choices(tmp_path)
    assert [c.label(tmp_path) for c in choices] == [
        "train/a/checkpoints/best.pt · step 10 · FID 12.3",
        "train/a/checkpoints/last.pt · step 20",
        "train/a/checkpoints/step_0000010.pt · step 10",
        "train/b/checkpoints/last.pt · step 5",
        "train/b/checkpoints/step_0000005.pt · step 5",
    ]


def test_archive_and_delete_stay_in_the_root_and_spare_a_live_run(tmp_path: Path) -> None:
    from ddpm.runlock import RunLock

    root = tmp_path / "outputs"
    run = fake_run(root)
    fake_run(tmp_path / "elsewhere")
    secret = tmp_path / "secret.txt"
    secret.write_text("keep")
    (run / "link").symlink_to(secret)
    (root / "escape").symlink_to(tmp_path / "elsewhere" / "train" / "r1")
    for bad, needle in [
        ("../elsewhere/train/r1", "outside the outputs root"),
        (str(tmp_path / "elsewhere" / "train" / "r1"), "outside the outputs root"),
        ("escape", "outside the outputs root"),
        (".", "not a training run"),
        ("train", "not a training run"),
        ("train/nope", "not a training run"),
    ]:
        for action in (launch.archive, launch.delete):
            with pytest.raises(ConfigError, match=needle):
                action(root, bad)
    with RunLock(run):  # a live ddpm-train holds this lock
        for action in (launch.archive, launch.delete):
            with pytest.raises(ConfigError, match="is training: stop it first"):
                action(root, "train/r1")
    assert run.is_dir()
    dest = launch.archive(root, "train/r1")
    assert dest == (root / "archive" / "train" / "r1").resolve() and (dest / "config.yaml").is_file() and not run.exists()
    assert runs.find_runs(root) == []
    fake_run(root)
    assert launch.archive(root, "train/r1").name == "r1-2"
    fake_run(root)
    (run / "link").symlink_to(secret)
    launch.delete(root, "train/r1")
    assert not run.exists() and secret.read_text() == "keep" and (tmp_path / "elsewhere" / "train" / "r1").is_dir()


# --- train: groups, overrides, checks ---


def test_train_groups_come_from_the_packaged_configs() -> None:
    from importlib import resources

    groups = launch.train_groups()
    conf = resources.files("ddpm.conf")
    for group in ("dataset", "model", "schedule", "experiment"):
        assert groups[group][1] == sorted(f.name[:-5] for f in conf.joinpath(group).iterdir() if f.name.endswith(".yaml"))
    assert groups["model"][0] == "small" and "tiny" in groups["model"][1]
    assert groups["experiment"][0] is None and "quickstart" in groups["experiment"][1]
    assert "ddpm" in launch.group_options("sampler")
    with pytest.raises(ConfigError, match="no config group"):
        launch.group_options("nope")


def test_overrides_refuse_what_the_dashboard_sets() -> None:
    assert launch.build_overrides({"model": "tiny", "experiment": None}, "train.max_steps=5 'paths.data_dir=/a b'") == [
        "model=tiny",
        "train.max_steps=5",
        "paths.data_dir=/a b",
    ]
    for bad, needle in [
        ("hydra.run.dir=/etc", "set by the dashboard"),
        ("+hydra/launcher=joblib", "set by the dashboard"),
        ("resume=/tmp/x.pt", "set by the dashboard"),
        ("train.max_steps", "not key=value"),
        ("'unclosed", "No closing quotation"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            launch.parse_extra(bad)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("model=nope", ""),
        ("gpu=fp16", ""),
        ("train.max_steps=many", ": Value 'many' of type 'str' could not be converted to Integer"),
    ],
)
def test_config_check_gives_the_cli_one_line_error(bad: str, reason: str, tmp_path: Path) -> None:
    """The CLI's one line, with Hydra's reason added where the CLI's line has none."""
    with pytest.raises(ConfigError) as info:
        launch.check_config([bad])
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm.train", bad, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"error: {info.value}" == proc.stderr.strip().splitlines()[-1] + reason
    assert "\n" not in str(info.value)


def test_config_check_validates_values() -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        launch.check_config(["train.max_steps=-3"])
    assert launch.check_config(["model=tiny", "schedule.T=100"]).schedule.T == 100


def test_run_names_are_checked(tmp_path: Path) -> None:
    assert launch.run_dir_for(tmp_path, "quick-1.a") == (tmp_path / "train" / "quick-1.a").resolve()
    for bad in ("", "../up", "a/b", ".hidden", "x" * 81, "sp ace"):
        with pytest.raises(ConfigError, match="run name"):
            launch.run_dir_for(tmp_path, bad)
    run = fake_run(tmp_path)
    with pytest.raises(ConfigError, match="exists already"):
        launch.run_dir_for(tmp_path, "r1")
    with pytest.raises(ConfigError, match="never started"):
        launch.resume(tmp_path, "train/r1")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- resume=latest\n")
    assert launch.run_overrides(run) == ["model=tiny"]
    (run / ".hydra" / "overrides.yaml").write_text("- model=tiny\n- hydra.run.dir=/tmp/elsewhere\n")
    with pytest.raises(ConfigError, match="set by the dashboard"):
        launch.resume(tmp_path, "train/r1")
    with pytest.raises(ConfigError, match="set by the dashboard"):
        launch.launch(tmp_path, "x", ["model=tiny", "hydra.run.dir=/tmp/elsewhere"])


def test_train_argv_runs_ddpm_train_without_a_shell(tmp_path: Path) -> None:
    argv = launch.train_argv(tmp_path / "a b", ["model=tiny"])
    assert argv[:3] == [sys.executable, "-m", "ddpm.train"]
    assert argv[3:] == ["model=tiny", f"hydra.run.dir='{tmp_path / 'a b'}'"]
    # a launch turns the progress bar off (its log is launch.log), unless the overrides say otherwise
    assert launch.launch_overrides(["model=tiny"]) == ["model=tiny", "train.progress=false"]
    assert launch.launch_overrides(["train.progress=true"]) == ["train.progress=true"]
    root = tmp_path.resolve()
    assert launch.command_line(root, "r1", ["model=tiny"]) == f"ddpm-train model=tiny train.progress=false hydra.run.dir={root}/train/r1"
    assert launch.command_line(root, "bad name", ["model=tiny"]) == "ddpm-train model=tiny train.progress=false"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_launch_stop_resume(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    overrides = tiny_train_overrides(data_dir, cache_dir, **{"train.max_steps": 60, "train.ckpt_every": 1000, "train.log_every": 5})
    proc = launch.launch(tmp_path, "t1", overrides)
    run = (tmp_path / "train" / "t1").resolve()
    try:
        assert launch.is_live(run)
        wait_for(lambda: runs.loss_curve(run) != [], 120, "the first logged loss")
        assert runs.run_info(tmp_path, "train/t1").status == "running"
        assert launch.stop(tmp_path, "train/t1", wait_s=60)
        assert proc.wait(timeout=60) != 0  # SIGTERM ends the command with 128 + 15 after its checkpoint
    finally:
        if proc.poll() is None:
            proc.kill()
    info = runs.run_info(tmp_path, "train/t1")
    assert info.status == "stopped" and not launch.is_live(run)
    assert [p.name for p in info.checkpoints][0] == "last.pt"
    assert "received SIGTERM" in (run / "train.log").read_text()
    assert not launch.stop(tmp_path, "train/t1")  # nothing left to signal
    proc = launch.resume(tmp_path, "train/t1")
    assert proc.args[-2] == "resume=latest" and proc.args[-1] == f"hydra.run.dir={run}"
    assert proc.wait(timeout=300) == 0, runs.tail(run / runs.LAUNCH_LOG)
    assert "resumed from" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["step"] == 60
    assert runs.run_info(tmp_path, "train/t1").status == "finished"
    assert launch.run_overrides(run) == overrides  # resume=latest is not carried into a later resume


# --- sample ---


@pytest.fixture()
def ckpt_root(tiny_ckpt: Path, tmp_path: Path) -> Path:
    """An outputs root holding the tiny run's checkpoint at train/tiny/checkpoints/last.pt."""
    dst = tmp_path / "outputs" / "train" / "tiny" / "checkpoints"
    dst.mkdir(parents=True)
    shutil.copy(tiny_ckpt, dst / "last.pt")
    (dst.parent / "train.log").write_text("")
    return tmp_path / "outputs"


def test_sample_writes_the_command_outputs(ckpt_root: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPM_DATA_DIR", str(data_dir))
    out = sampling.run_sample(ckpt_root, "train/tiny/checkpoints/last.pt", "ddim", 5, 3, 4, True)
    assert out.parent == (ckpt_root / "sample").resolve() and out.name.startswith("tiny-")
    summary = json.loads((out / "sample.json").read_text())
    assert summary["outputs"] == ["samples.png", "sampling.gif", "noise.gif"]
    assert (summary["num_samples"], summary["seed"], summary["evaluations"]) == (4, 3, 5)
    monkeypatch.setattr(sampling.time, "strftime", lambda fmt, *t: out.name[len("tiny-") :])  # a second click in the same second
    again = sampling.run_sample(ckpt_root, "train/tiny/checkpoints/last.pt", "ddim", 5, 3, 1, False)
    monkeypatch.undo()
    assert again.name == f"{out.name}-2" and (again / "samples.png").is_file()
    with pytest.raises(ConfigError, match="outside the outputs root"):
        sampling.run_sample(ckpt_root, "../../x.pt", "ddim", 5, 0, 1, False)
    with pytest.raises(ConfigError, match="sampler"):
        sampling.run_sample(ckpt_root, "train/tiny/checkpoints/last.pt", "nope", 5, 0, 1, False)


def test_generator_gives_a_new_image_per_click(ckpt_root: Path) -> None:
    import numpy as np

    model = sampling.load_checkpoint_model(ckpt_root, "train/tiny/checkpoints/last.pt")
    cfg = sampling.compose_sample(sampling.sample_overrides(ckpt_root / "x.pt", "ddim", 5, 0, 1, False))
    gen = sampling.Generator(model, cfg.sampler, first_seed=7)
    (s1, a), (s2, b) = gen(), gen()
    assert (s1, s2) == (7, 8) and a.size == (gen.pre.shape[2], gen.pre.shape[1]) == (32, 32) and a.mode == "L"
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    _, again = sampling.Generator(model, cfg.sampler, first_seed=7)()
    assert np.array_equal(np.asarray(a), np.asarray(again))
    # the image of ddpm-sample for that seed: one path for both
    from ddpm.generate import generate
    from ddpm.samplers import build_sampler, make_eps_fn

    x = generate(
        make_eps_fn(model.pre.model, model.pre.diffusion),
        build_sampler(cfg.sampler, model.pre.diffusion),
        model.pre.shape,
        1,
        7,
        1,
        model.device,
    )
    assert np.array_equal(np.asarray(a), np.asarray(sampling.image_of(x[0])))


def test_generator_honours_the_runtime_settings(ckpt_root: Path) -> None:
    """The generator runs under the runtime group of ddpm-sample's config, as the commands do."""
    model = sampling.load_checkpoint_model(ckpt_root, "train/tiny/checkpoints/last.pt", ["runtime=bf16", "runtime.device=cpu"])
    assert (model.device.type, model.rt.precision) == ("cpu", "bf16")
    cfg = sampling.compose_sample(sampling.sample_overrides(ckpt_root / "x.pt", "ddim", 3, 0, 1, False))
    seed, img = sampling.Generator(model, cfg.sampler, first_seed=3)()
    assert seed == 3 and img.size == (32, 32)


def test_checkpoints_load_only_through_the_safe_loader(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "bad.pt").write_bytes(pickle.dumps({"format": "x", "payload": Evil()}, protocol=2))
    from ddpm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        sampling.load_checkpoint_model(tmp_path, "bad.pt")


# --- command line ---


def test_cli_serves_on_localhost_by_default(tmp_path: Path) -> None:
    args = cli.parse_args([])
    assert (args.host, args.port, args.outputs) == ("127.0.0.1", 8501, Path("outputs"))
    argv = cli.streamlit_argv(tmp_path, "127.0.0.1", 8600)
    assert argv[:4] == [sys.executable, "-m", "streamlit", "run"] and Path(argv[4]).name == "app.py"
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1" and argv[argv.index("--server.port") + 1] == "8600"
    assert argv[-3:] == ["--", "--outputs", str(tmp_path)]
    assert argv[argv.index("--client.toolbarMode") + 1] == "viewer"  # no Deploy button
    (tmp_path / "f").write_text("")
    for bad, needle in ([["--port", "70000"], "expected 1..65535"], [["--outputs", str(tmp_path / "f")], "not a directory"]):
        proc = subprocess.run([sys.executable, "-m", "ddpm.dashboard.cli", *bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr.strip().splitlines()[-1]


# --- pages (AppTest) ---


def test_runs_page(tmp_path: Path) -> None:
    at = app("runs", tmp_path)
    assert not at.exception and "No training runs" in at.info[0].value
    fake_run(tmp_path)
    fake_run(tmp_path, "train/r2", steps=(5,), max_steps=20)
    at = app("runs", tmp_path)
    assert not at.exception
    assert sorted(at.selectbox[0].options) == ["train/r1", "train/r2"]
    at.selectbox[0].select("train/r1").run()
    assert at.subheader[0].value == "train/r1 · stopped"
    assert "step 10 / 40" in at.get("progress")[0].proto.text
    assert len(at.get("image")) == 1
    assert [b.label for b in at.button] == ["Resume training", "Archive run", "Delete run"]
    # a click on a row of the table selects its run
    other = at.dataframe[0].value["run"].tolist().index("train/r2")
    at.session_state["runs-table"] = {"selection": {"rows": [other], "columns": []}}
    at.run()
    assert at.selectbox[0].value == "train/r2" and at.subheader[0].value == "train/r2 · stopped"


def test_runs_page_shows_budget_runs_failures_and_archives(tmp_path: Path) -> None:
    budget_run(tmp_path)
    failed = fake_run(tmp_path, "train/c10", steps=(1,))
    err = "CIFAR-10 dataset not found: looked for /data/cifar10/cifar-10-batches-py. " + "Put cifar-10-python.tar.gz there." * 4
    (failed / runs.LAUNCH_LOG).write_text(f"$ python -m ddpm.train dataset=cifar10\nerror: {err}\n{runs.EXIT_LINE.format(2)}\n")
    at = app("runs", tmp_path)
    assert not at.exception
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["train/qs", "progress"] == "4.5 / 4.5 min" and table.loc["train/qs", "img/s"] == 142
    assert table.loc["train/c10", "status"] == "failed"
    at.selectbox[0].select("train/qs").run()
    assert at.subheader[0].value == "train/qs · finished"
    assert at.get("progress")[0].proto.text == "4.5 / 4.5 min of the time budget · step 10236 · 142 img/s"
    at.selectbox[0].select("train/c10").run()
    assert at.subheader[0].value == "train/c10 · failed" and at.error[0].value == f"error: {err}"
    # archive: asked first, then moved out of the list
    at.button(key="archive-train/c10").click().run()
    assert "Move train/c10 to archive/train/c10?" in at.warning[0].value and (tmp_path / "train" / "c10").is_dir()
    at.button(key="confirm-archive-train/c10").click().run()
    assert not at.exception and at.success[0].value == "train/c10: archived to archive/train/c10"
    assert at.selectbox[0].options == ["train/qs"] and (tmp_path / "archive" / "train" / "c10" / "config.yaml").is_file()
    at.button(key="delete-train/qs").click().run()
    at.button(key="cancel-delete-train/qs").click().run()
    assert not at.warning and (tmp_path / "train" / "qs").is_dir()


def test_train_page_checks_and_launches(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    at = app("train", tmp_path)
    assert not at.exception and not at.error
    assert {"dataset", "model", "schedule", "experiment"} <= {s.label for s in at.selectbox}
    at.selectbox(key="group-experiment").select("(none)")
    at.selectbox(key="group-model").select("tiny").run()
    at.text_input(key="extra").input("train.max_steps=-1").run()
    assert at.error[0].value == "error: train.max_steps must be >= 0, got -1"
    assert at.button(key="launch").disabled
    at.text_input(key="extra").input("train.max_steps=abc").run()
    assert at.error[0].value.startswith("error: Error merging override train.max_steps=abc: Value 'abc' of type 'str' could not")
    extra = " ".join(
        o
        for o in tiny_train_overrides(data_dir, cache_dir, **{"train.max_steps": 10, "train.sample_every": 5})
        if not o.startswith("model=")
    )
    at.text_input(key="extra").input(extra).run()
    at.text_input(key="run_name").input("from-page").run()
    run = (tmp_path / "train" / "from-page").resolve()
    assert not at.error and at.code[0].value == f"ddpm-train model=tiny {extra} hydra.run.dir={run}"
    # a double click: the second Launch finds the run the first one started, and starts nothing
    at.button(key="launch").click().run()
    assert not at.exception and not at.error
    at.button(key="launch").click().run()
    assert not at.exception and not at.error
    assert at.info[0].value.startswith("train/from-page exists already: it was launched by the first click")
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["from-page"]
    assert at.text_input(key="run_name").value == "from-page"  # the name shown is the name used
    assert at.subheader[0].value.startswith("train/from-page · ")
    wait_for(lambda: not launch.is_live(run), 300, "the launched run to end")
    assert (run / "metrics.json").is_file(), runs.tail(run / runs.LAUNCH_LOG)
    assert [p.name for p in runs.sample_grids(run)] == ["step_0000005.png", "step_0000010.png"]
    assert (run / runs.LAUNCH_LOG).read_text().count("\n$ ") + 1 == 1  # one start
    at = app("train", tmp_path)
    at.text_input(key="run_name").input("from-page").run()
    at.button(key="launch").click().run()
    assert at.error[0].value == "error: run train/from-page exists already: pick another name, or resume it from the Runs page"
    at.button(key="new-name").click().run()
    assert at.text_input(key="run_name").value.startswith("run-") and not at.error


def test_train_page_starts_from_quickstart_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    at = app("train", tmp_path)
    assert not at.exception and not at.error
    assert at.selectbox(key="group-experiment").value == "quickstart"
    assert at.code[0].value.startswith("ddpm-train experiment=quickstart train.progress=false hydra.run.dir=")
    assert "experiment=quickstart" in at.caption[0].value
    at.selectbox(key="group-experiment").select("(none)").run()  # the choice to switch
    assert at.code[0].value.startswith("ddpm-train train.progress=false hydra.run.dir=")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    at = app("train", tmp_path)
    assert at.selectbox(key="group-experiment").value == "(none)" and not at.caption


def test_a_failed_start_reads_failed_with_its_error(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    proc = launch.launch(tmp_path / "out", "c10", ["dataset=cifar10", "model=tiny", f"paths.data_dir={empty}"])
    assert proc.wait(timeout=120) == 2
    wait_for(lambda: runs.EXIT_LINE.format(2) in runs.tail(tmp_path / "out" / "train" / "c10" / runs.LAUNCH_LOG), 10, "the exit line")
    r = runs.run_info(tmp_path / "out", "train/c10")
    assert r.status == "failed" and r.error.startswith(f"CIFAR-10 dataset not found: looked for {empty}/cifar10")
    at = app("runs", tmp_path / "out")
    assert at.subheader[0].value == "train/c10 · failed" and at.error[0].value == f"error: {r.error}"


def test_sample_page(ckpt_root: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPM_DATA_DIR", str(data_dir))
    at = app("sample", ckpt_root)
    assert not at.exception and at.selectbox(key="ckpt").options == ["train/tiny/checkpoints/last.pt"]
    assert not at.info
    at.selectbox(key="sampler").select("exact_score").run()
    assert at.info[0].value.startswith("sampler=exact_score ignores the network")
    at.selectbox(key="sampler").select("ddim")
    at.number_input(key="steps").set_value(5)
    at.number_input(key="count").set_value(4)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert [i.captions[0] for i in at.get("image")] == ["samples.png", "sampling.gif", "noise.gif"]
    assert len(at.get("download_button")) == 3
    out = next((ckpt_root / "sample").iterdir())
    grid = Image.open(out / "samples.png")
    gif = Image.open(out / "sampling.gif")
    big = Image.open(io.BytesIO(sampling.preview_grid((out / "samples.png").read_bytes(), gif.width)))
    assert gif.width > grid.width and big.size == gif.size  # shown as large as the GIFs
    assert big.resize(grid.size, resample=Image.Resampling.NEAREST).tobytes() == grid.tobytes()
    at.button[1].click().run()
    assert not at.exception and "a new digit per click (mnist, seed 0)" in at.get("image")[-1].captions[0]
    at.button[1].click().run()
    assert "seed 1" in at.get("image")[-1].captions[0]


def test_evaluate_page(tmp_path: Path) -> None:
    at = app("evaluate", tmp_path)
    assert not at.exception and "No evaluations" in at.info[0].value
    root = tmp_path.resolve()
    assert at.code[0].value == f"ddpm-evaluate ckpt={root}/train/<run>/checkpoints/last.pt hydra.run.dir={root}/evaluate/<run>"
    fake_run(tmp_path)
    at = app("evaluate", tmp_path)  # the command line names the checkpoint there is
    assert at.code[0].value == f"ddpm-evaluate ckpt={root}/train/r1/checkpoints/step_0000005.pt hydra.run.dir={root}/evaluate/r1"
    shutil.rmtree(tmp_path / "train")
    (tmp_path / "evaluate" / "e1").mkdir(parents=True)
    (tmp_path / "evaluate" / "e1" / "metrics.json").write_text(json.dumps({"fid": {"value": 9.5}}))
    sweep = tmp_path / "multirun" / "s"
    sweep.mkdir(parents=True)
    (sweep / "sweep.csv").write_text("job,schedule.T,loss\n0,100,0.5\n1,200,0.25\n")
    at = app("evaluate", tmp_path)
    assert not at.exception and len(at.dataframe) == 2
    assert at.dataframe[0].value.to_dict("records") == [{"run": "evaluate/e1", "fid.value": 9.5}]
    assert at.dataframe[1].value["loss"].tolist() == ["0.5", "0.25"]
    assert at.subheader[0].value == "multirun/s/sweep.csv"


def test_regimes_page(tmp_path: Path) -> None:
    at = app("regimes", tmp_path)
    assert not at.exception and "No ddpm-regimes runs" in at.info[0].value
    assert at.code[0].value.startswith(f"ddpm-regimes dataset=mnist hydra.run.dir={tmp_path.resolve()}/regimes/mnist ")
    reg = tmp_path / "regimes" / "g1"
    reg.mkdir(parents=True)
    (reg / "regimes.json").write_text(json.dumps({"t_S": 1.5, "t_C": 0.25, "theory": {"t_S": 1.4}}))
    Image.new("RGB", (30, 20), "white").save(reg / "regimes.png")
    at = app("regimes", tmp_path)
    assert not at.exception
    assert at.dataframe[0].value.to_dict("records") == [{"run": "regimes/g1", "t_S": 1.5, "t_C": 0.25, "theory.t_S": 1.4}]
    assert [i.captions[0] for i in at.get("image")] == ["regimes.png"]


def test_app_serves_every_page(tmp_path: Path) -> None:
    fake_run(tmp_path)
    at = AppTest.from_file(str(VIEWS.parent / "app.py"), default_timeout=120)
    at.session_state["outputs_root"] = str(tmp_path)
    at.run()
    assert not at.exception and at.title[0].value == "Runs"
    assert at.sidebar.caption[0].value == f"outputs root: {tmp_path}"
    for view, title in [("train", "Train"), ("sample", "Sample"), ("evaluate", "Evaluate"), ("regimes", "Regimes"), ("runs", "Runs")]:
        at.switch_page(str(VIEWS / f"{view}.py")).run()
        assert not at.exception and at.title[0].value == title
