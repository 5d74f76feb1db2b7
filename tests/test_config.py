"""Every config group composes, typos fail at compose time, and dry_run works on the real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import COMMAND_NAMES, REPO, compose_config
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from PIL import Image

from ddpm.errors import DataError
from ddpm.train import train

GROUPS = ("dataset", "model", "schedule", "runtime", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_config("train", [f"{group}={option}"])
    if group == "experiment":
        assert cfg.experiment == option
    else:
        assert cfg[group].name == option


def test_experiments_override_only_what_changes():
    base = compose_config("train")
    c3 = compose_config("train", ["experiment=config3_mnist"])
    assert (c3.schedule.T, c3.schedule.beta_end, c3.train.lr) == (1000, 0.01, 2e-4)
    assert c3.train.batch_size == base.train.batch_size
    assert compose_config("train", ["experiment=config2_mnist"]).schedule.T == 300
    assert compose_config("train", ["experiment=config1_cryptopunks"]).dataset.name == "cryptopunks"
    assert compose_config("train", ["experiment=cats64"]).dataset.image_size == 64


def test_model_presets_sizes():
    from ddpm.models import build_model

    sizes = {}
    for name in ("tiny", "small", "base"):
        m = build_model(compose_config("train", [f"model={name}"]).model, 32, 3)
        sizes[name] = sum(p.numel() for p in m.parameters())
    assert sizes["tiny"] < 1_000_000 < sizes["small"] < sizes["base"]


def test_typos_and_wrong_types_fail_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_config("train", ["train.batchsize=3"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_config("train", ["train.batch_size=abc"])


def test_multirun_style_overrides_of_T_and_betas_compose():
    for sched in ("linear", "cosine", "quadratic"):
        cfg = compose_config("train", [f"schedule={sched}", "schedule.T=250", "schedule.beta_end=0.03"])
        assert (cfg.schedule.name, cfg.schedule.T) == (sched, 250)


@pytest.mark.parametrize(
    "dataset,n,shape",
    [("mnist", 60000, (1, 32, 32)), ("cryptopunks", 9000, (3, 24, 24)), ("cats", 4638, (3, 64, 64))],
)
def test_dry_run_on_real_data(dataset, n, shape, data_dir, tmp_path, capsys):
    cfg = compose_config(
        "train", [f"dataset={dataset}", f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "dry_run=true"]
    )
    assert train(cfg, tmp_path / "run") is None
    out = capsys.readouterr().out
    assert f"{n} images {shape}" in out
    assert "parameters" in out and (tmp_path / "run" / "config.yaml").is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_real_dataset_contents(data_dir, tmp_path):
    from ddpm.data import load_dataset

    mnist = load_dataset(compose_config("train").dataset, data_dir, tmp_path, "train")
    assert mnist.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the known first labels
    assert mnist.images[:, :, :2].max() == 0 and mnist.images[:, :, 2:30, 2:30].float().mean() / 255 == pytest.approx(0.1307, abs=1e-3)
    assert len(load_dataset(compose_config("train").dataset, data_dir, tmp_path, "test")) == 10000
    punks = load_dataset(compose_config("train", ["dataset=cryptopunks"]).dataset, data_dir, tmp_path, "test")
    assert len(punks) == 1000 and punks.images.dtype.is_floating_point is False
    # Transparent pixels are composited onto the configured background: corners are (99, 133, 150).
    assert punks.images[:, :, 0, 0].tolist().count([99, 133, 150]) > 900


def test_folder_dataset_and_missing_data(tmp_path):
    from ddpm.data import load_dataset

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = compose_config("train", ["dataset=folder", f"dataset.path={folder}", "dataset.image_size=16", "dataset.test_fraction=0"])
    data = load_dataset(cfg.dataset, tmp_path, tmp_path / "cache", "train")
    assert data.images.shape == (5, 3, 16, 16)
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(folder / "0.png")))
    with pytest.raises(DataError, match="looked for"):
        load_dataset(compose_config("train").dataset, tmp_path, tmp_path / "cache", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(compose_config("train").dataset, tmp_path / "nope", tmp_path / "cache", "train")


def test_configs_ship_with_the_installed_package():
    import importlib.resources as resources

    root = resources.files("ddpm.conf")
    assert Path(str(root / "train.yaml")).is_file()
    assert {p.name for p in (root / "dataset").iterdir()} >= {f"{o}.yaml" for o in options("dataset")}


def test_folder_dataset_refuses_16_bit_and_undecodable_images(tmp_path):
    import tarfile

    from ddpm.data import load_dataset

    cfg = compose_config("train", ["dataset=folder", f"dataset.path={tmp_path / 'imgs'}", "dataset.image_size=8", "dataset.channels=1"])
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "imgs" / "deep.png")
    with pytest.raises(DataError, match=r"pixel mode I;16"):
        load_dataset(cfg.dataset, tmp_path, tmp_path / "cache", "train")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with tarfile.open(tmp_path / "imgs.tar", "w") as tar:
        tar.add(tmp_path / "bad.png", arcname="bad.png")
    cfg.dataset.path = str(tmp_path / "imgs.tar")
    with pytest.raises(DataError, match=r"cannot read image .*imgs.tar:bad.png"):
        load_dataset(cfg.dataset, tmp_path, tmp_path / "cache", "train")


@pytest.mark.parametrize(
    "config_name,arg,new",
    [
        ("train", "gpu=bf16", "runtime="),
        ("train", "gpu.precision=bf16", "runtime.precision="),
        ("train", "gpu.grad_accum_steps=2", "train.grad_accum_steps="),
        ("sample", "device=cpu", "runtime.device="),
        ("visualize", "precision=bf16", "runtime.precision="),
        ("evaluate", "device=cpu", "runtime.device="),
        ("evaluate", "real_split=test", "split="),
        ("regimes", "kernel.device=cpu", "runtime.device="),
        ("regimes", "threads=1", "runtime.num_threads="),
        ("sample", "+gpu.device=cpu", "runtime.device="),
        (
            "regimes",
            "data=gaussian",
            "dataset=<cats|cifar10|cryptopunks|folder|mnist> (images) or synthetic=<gaussian|gaussian_spectrum|hierarchical|mixture>",
        ),
        ("regimes", "data.n=300", "dataset.n= (images) or synthetic.n= (synthetic laws)"),
        ("regimes", "data.seed=1", "dataset.subset_seed= (images) or synthetic.seed= (synthetic laws)"),
        ("regimes", "data.downsample=2", "points.downsample="),
        ("regimes", "points.n=5", "dataset.n= (images) or synthetic.n= (synthetic laws)"),
        ("regimes", "points.seed=3", "dataset.subset_seed= (images) or synthetic.seed= (synthetic laws)"),
        ("regimes", "trained.use_ema=false", "use_ema="),
        ("regimes", "data.sigma2=2", "synthetic.sigma2="),
        ("regimes", "data.dataset.image_size=14", "dataset.image_size="),
    ],
)
def test_renamed_keys_fail_in_one_line_naming_the_new_key(config_name, arg, new, capsys):
    from ddpm.cli import precheck

    with pytest.raises(SystemExit) as exc:
        precheck(config_name, ["ckpt=x", arg])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"use {new}" in err[0], err
    with pytest.raises(SystemExit):  # a multirun too, before Hydra's many-line report
        precheck(config_name, ["-m", "ckpt=x", arg])


@pytest.mark.parametrize("config_name", ["train", "sample", "visualize", "evaluate", "regimes"])
def test_every_command_shares_runtime_paths_and_output_dirs(config_name):
    cfg = compose_config(config_name, ["runtime=bf16", "runtime.device=cpu", "runtime.num_threads=1", "paths.cache_dir=/tmp/c"])
    assert (cfg.runtime.name, cfg.runtime.precision, cfg.runtime.device, cfg.runtime.num_threads) == ("bf16", "bf16", "cpu", 1)
    assert cfg.paths.cache_dir == "/tmp/c"
    if config_name != "regimes":
        assert cfg.sampler.name == "sde_dpm_solver"  # one default sampler everywhere
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        hc = compose(config_name, return_hydra_config=True).hydra
    assert hc.job.name == config_name
    assert hc.run.dir.startswith(f"outputs/{config_name}/") and hc.sweep.dir.startswith(f"outputs/multirun/{config_name}/")


@pytest.mark.parametrize("config_name", COMMAND_NAMES)
def test_one_outputs_root_and_one_data_root_rule(config_name, monkeypatch):
    """``paths.output_dir`` (DDPM_OUTPUT_DIR) holds every command's run dirs; ``paths.data_dir``
    defaults to null everywhere (the checkpoint's root, else ``data``)."""
    monkeypatch.delenv("DDPM_DATA_DIR", raising=False)
    monkeypatch.setenv("DDPM_OUTPUT_DIR", "/tmp/runs_here")
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        cfg = compose(config_name, return_hydra_config=True)
        flag = compose(config_name, ["paths.output_dir=/srv/ddpm"], return_hydra_config=True)
    assert cfg.paths.data_dir is None and cfg.paths.output_dir == "/tmp/runs_here"
    job = "train/mnist" if config_name == "train" else config_name
    assert cfg.hydra.run.dir.startswith(f"/tmp/runs_here/{job}/"), cfg.hydra.run.dir
    assert flag.hydra.run.dir.startswith(f"/srv/ddpm/{job}/") and flag.hydra.sweep.dir.startswith(f"/srv/ddpm/multirun/{config_name}/")


def test_dashboard_outputs_default_is_the_same_root(monkeypatch):
    """The dashboard is not a Hydra command: its ``--outputs`` default follows DDPM_OUTPUT_DIR too."""
    from ddpm.dashboard.cli import parse_args

    monkeypatch.setenv("DDPM_OUTPUT_DIR", "/tmp/runs_here")
    assert parse_args([]).outputs == Path("/tmp/runs_here")
    monkeypatch.delenv("DDPM_OUTPUT_DIR")
    assert parse_args([]).outputs == Path("outputs")


def test_a_key_below_a_null_group_names_the_group_to_choose(capsys):
    from ddpm.cli import precheck

    with pytest.raises(SystemExit) as exc:
        precheck("regimes", ["synthetic.n=5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: synthetic.n= needs a synthetic option: add synthetic=<gaussian|gaussian_spectrum|hierarchical|mixture>"
    ]
    precheck("regimes", ["synthetic=gaussian", "synthetic.n=5", "hydra.run.dir=/tmp/ddpm-test-null-group"])  # composes


def test_empty_outputs_root_is_refused_before_hydra_makes_a_run_dir(capsys):
    from ddpm.cli import precheck

    with pytest.raises(SystemExit) as exc:
        precheck("sample", ["ckpt=x", "paths.output_dir="])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: paths.output_dir must be non-empty (a folder: the run dirs go below it), got ''"]


def test_data_root_rule():
    from ddpm.paths import data_root

    paths = OmegaConf.create({"data_dir": None})
    assert data_root(paths) == "data"  # nothing names one
    assert data_root(paths, "/stored/root") == "/stored/root"  # the checkpoint's root
    assert data_root(OmegaConf.create({"data_dir": "/given"}), "/stored/root") == "/given"  # the command line wins


def test_commands_with_a_checkpoint_read_its_data_root(tiny_ckpt, data_dir, monkeypatch):
    """ddpm-sample / -evaluate / -visualize (one loader) read the root the checkpoint was trained
    from when paths.data_dir is null, and the command line's root when it is set."""
    from ddpm.inference import load

    monkeypatch.delenv("DDPM_DATA_DIR", raising=False)
    for name in ("sample", "evaluate", "visualize"):
        cfg = compose_config(name, [f"ckpt={tiny_ckpt}", "runtime.device=cpu"])
        assert cfg.paths.data_dir is None
        load(cfg)
        assert cfg.paths.data_dir == str(data_dir)  # what the tiny run was trained from
    cfg = compose_config("evaluate", [f"ckpt={tiny_ckpt}", "runtime.device=cpu", "paths.data_dir=/elsewhere"])
    load(cfg)
    assert cfg.paths.data_dir == "/elsewhere"


@pytest.mark.parametrize("option", options("synthetic") + ["mnist", "cifar10", "cryptopunks", "cats"])
def test_regimes_sources_compose_from_the_shared_dataset_group_or_synthetic(option):
    from ddpm.regimes.data import data_source

    synthetic = option in options("synthetic")
    cfg = compose_config("regimes", [f"synthetic={option}" if synthetic else f"dataset={option}"])
    src = data_source(cfg)
    assert src.name == option and (src.dataset is None) == synthetic
    if synthetic:
        assert src.n == cfg.synthetic.n == {"gaussian": 1000, "gaussian_spectrum": 1000, "mixture": 2000, "hierarchical": 2000}[option]
        assert src.seed == cfg.synthetic.seed == 0
    else:  # the training config's dataset node; MNIST at its native 28x28 (d = 784), the others as trained
        train = compose_config("train", [f"dataset={option}"]).dataset
        assert src.dataset.image_size == (28 if option == "mnist" else train.image_size) and src.dataset.root == train.root
        # the training subset is dataset.n / dataset.subset_seed, as in ddpm-train: no other draw keys
        assert "n" not in src and "seed" not in src and src.dataset.n is None


def test_regimes_takes_use_ema_at_the_top_as_every_command() -> None:
    cfg = compose_config("regimes", ["use_ema=false"])
    assert cfg.use_ema is False and "use_ema" not in cfg.trained
    assert compose_config("regimes", []).use_ema is True
    assert "n" not in cfg.points and "seed" not in cfg.points  # points keeps only downsample
