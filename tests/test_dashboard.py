"""ddpm-dashboard: the path guard, run discovery, config checks, launch/stop/resume, sampling, and
every page through Streamlit's AppTest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
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


@pytest.mark.parametrize("bad", ["model=nope", "gpu=fp16", "train.max_steps=many"])
def test_config_check_gives_the_cli_one_line_error(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        launch.check_config([bad])
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm.train", bad, f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {info.value}"


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

    pre = sampling.load_checkpoint_model(ckpt_root, "train/tiny/checkpoints/last.pt")
    cfg = sampling.compose_sample(sampling.sample_overrides(ckpt_root / "x.pt", "ddim", 5, 0, 1, False))
    gen = sampling.Generator(pre, cfg.sampler, first_seed=7)
    (s1, a), (s2, b) = gen(), gen()
    assert (s1, s2) == (7, 8) and a.size == (pre.shape[2], pre.shape[1]) == (32, 32) and a.mode == "L"
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    _, again = sampling.Generator(pre, cfg.sampler, first_seed=7)()
    assert np.array_equal(np.asarray(a), np.asarray(again))


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
    assert [b.label for b in at.button] == ["Resume training"]


def test_train_page_checks_and_launches(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    at = app("train", tmp_path)
    assert not at.exception and not at.error
    assert {"dataset", "model", "schedule", "experiment"} <= {s.label for s in at.selectbox}
    at.selectbox(key="group-model").select("tiny").run()
    at.text_input(key="extra").input("train.max_steps=-1").run()
    assert at.error[0].value == "error: train.max_steps must be >= 0, got -1"
    assert at.button[0].disabled
    extra = " ".join(
        o
        for o in tiny_train_overrides(data_dir, cache_dir, **{"train.max_steps": 10, "train.sample_every": 5})
        if not o.startswith("model=")
    )
    at.text_input(key="extra").input(extra).run()
    assert not at.error and "model=tiny" in at.caption[0].value
    at.text_input(key="run_name").input("from-page").run()
    at.button[0].click().run()
    assert not at.exception and not at.error
    run = (tmp_path / "train" / "from-page").resolve()
    wait_for(lambda: (run / "metrics.json").is_file() or not launch.is_live(run), 300, "the launched run to end")
    assert (run / "metrics.json").is_file(), runs.tail(run / runs.LAUNCH_LOG)
    assert [p.name for p in runs.sample_grids(run)] == ["step_0000005.png", "step_0000010.png"]
    at = app("train", tmp_path)
    at.text_input(key="run_name").input("from-page").run()
    at.button[0].click().run()
    assert at.error[0].value == "error: run train/from-page exists already: pick another name, or resume it from the Runs page"


def test_sample_page(ckpt_root: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPM_DATA_DIR", str(data_dir))
    at = app("sample", ckpt_root)
    assert not at.exception and at.selectbox(key="ckpt").options == ["train/tiny/checkpoints/last.pt"]
    at.selectbox(key="sampler").select("ddim")
    at.number_input(key="steps").set_value(5)
    at.number_input(key="count").set_value(4)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert [i.captions[0] for i in at.get("image")] == ["samples.png", "sampling.gif", "noise.gif"]
    assert len(at.get("download_button")) == 3
    at.button[1].click().run()
    assert not at.exception and "a new digit per click (mnist, seed 0)" in at.get("image")[-1].captions[0]
    at.button[1].click().run()
    assert "seed 1" in at.get("image")[-1].captions[0]


def test_evaluate_page(tmp_path: Path) -> None:
    at = app("evaluate", tmp_path)
    assert not at.exception and "No evaluations" in at.info[0].value
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
