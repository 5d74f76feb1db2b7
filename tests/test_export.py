"""ddpm-export: the safetensors + JSON pair holds exactly the checkpoint's weights, and sampling
from it gives exactly the checkpoint's samples; broken or mismatched pairs are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from safetensors.torch import load_file

from ddpm.checkpoint import save_checkpoint
from ddpm.commands import register_schemas
from ddpm.errors import CheckpointError, ConfigError
from ddpm.export.cli import export
from ddpm.generate import generate
from ddpm.models import build_model
from ddpm.pretrained import load_pretrained
from ddpm.sample import sample
from ddpm.samplers import build_sampler, make_eps_fn

register_schemas()
SCRIPT = Path(sys.executable).with_name("ddpm-export")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run dir whose checkpoint holds random (non-zero-output) raw and EMA weights that differ."""
    root = tmp_path_factory.mktemp("train_run")
    cfg = compose_config("train", ["model=tiny", "schedule.T=50", f"paths.data_dir={root}", "sampler.steps=4"])
    torch.manual_seed(0)
    model = build_model(cfg.model, int(cfg.dataset.image_size), int(cfg.dataset.channels))
    with torch.no_grad():  # the zero-initialised output layers would make every ε̂ zero
        raw = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
        ema = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    # channels_last conv weights, as a CPU training run stores them
    ema = {k: v.to(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in ema.items()}
    subset = {"n": 3, "seed": 5, "total": 10, "sha256": "0" * 64, "indices": torch.tensor([1, 4, 7], dtype=torch.int32)}
    state = {"step": 7, "model": raw, "ema": ema, "config": OmegaConf.to_container(cfg, resolve=True), "data_subset": subset}
    save_checkpoint(state, root / "checkpoints", 7, keep=1)
    return root


def export_cfg(ckpt: Path, *extra: str):
    return compose_config("export", [f"ckpt={ckpt}", *extra])


def test_export_holds_exactly_the_ema_weights_and_config(run_dir: Path, tmp_path: Path) -> None:
    out = export(export_cfg(run_dir), tmp_path)  # a run dir resolves to checkpoints/last.pt
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    weights = load_file(out["weights"])  # what another tool reads: safetensors alone
    assert weights.keys() == ckpt["ema"].keys()
    for k, v in ckpt["ema"].items():
        assert weights[k].dtype == v.dtype and torch.equal(weights[k], v), k
    meta = json.loads(Path(out["config"]).read_text())
    assert meta["step"] == 7 and meta["weights"] == "ema" and meta["config"] == ckpt["config"]
    assert Path(out["weights"]).name == "model.safetensors" and Path(out["config"]).name == "model.json"


def test_raw_weights_export_when_asked(run_dir: Path, tmp_path: Path) -> None:
    out = export(export_cfg(run_dir, "use_ema=false", "name=raw"), tmp_path)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    weights = load_file(out["weights"])
    assert all(torch.equal(weights[k], v) for k, v in ckpt["model"].items())
    pre = load_pretrained(out["weights"], use_ema=False)
    assert all(torch.equal(pre.model.state_dict()[k], v) for k, v in ckpt["model"].items())
    with pytest.raises(CheckpointError, match="holds the 'model' weights"):
        load_pretrained(out["weights"], use_ema=True)


def test_round_trip_gives_identical_weights_and_samples(run_dir: Path, tmp_path: Path) -> None:
    out = export(export_cfg(run_dir / "checkpoints" / "last.pt"), tmp_path / "export")
    a = load_pretrained(run_dir, channels_last=False)
    b = load_pretrained(out["weights"], channels_last=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.step == a.step == 7 and OmegaConf.to_container(b.cfg) == OmegaConf.to_container(a.cfg)
    assert b.diffusion.T == a.diffusion.T == 50
    # the training-subset record (dataset.n) travels in the JSON, its indices back as int32
    assert {k: v for k, v in b.data_subset.items() if k != "indices"} == {k: v for k, v in a.data_subset.items() if k != "indices"}
    assert b.data_subset["indices"].dtype == torch.int32 and torch.equal(b.data_subset["indices"], a.data_subset["indices"])
    images = []
    for pre in (a, b):
        sampler = build_sampler(pre.cfg.sampler, pre.diffusion)
        images.append(
            generate(make_eps_fn(pre.model, pre.diffusion), sampler, pre.shape, 3, seed=11, batch_size=3, device=torch.device("cpu"))
        )
    assert images[0].abs().max() > 0.1  # the weights do something: equal samples are not trivially equal
    assert torch.equal(images[0], images[1])
    # ddpm-sample from the export's run dir and from the checkpoint: the same grid, byte for byte
    grids = []
    for ckpt, name in ((run_dir, "from_ckpt"), (tmp_path / "export", "from_export")):
        cfg = compose_config(
            "sample",
            [f"ckpt={ckpt}", "num_samples=4", "batch_size=4", "sampler.steps=3", "gif.frames=0", "progress=false", "runtime.num_threads=1"],
        )
        summary = sample(cfg, tmp_path / name)
        grids.append((tmp_path / name / "samples.png").read_bytes())
    assert summary["ckpt"].endswith("model.safetensors")
    assert grids[0] == grids[1]


def test_mismatched_or_incomplete_pairs_are_refused(run_dir: Path, tmp_path: Path) -> None:
    out = export(export_cfg(run_dir), tmp_path / "a")
    other = export(export_cfg(run_dir, "use_ema=false"), tmp_path / "b")
    weights, cfg_json = Path(out["weights"]), Path(out["config"])
    # b's weights under a's JSON: the SHA-256 recorded in the JSON tells them apart
    Path(other["weights"]).replace(weights)
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_pretrained(weights)
    cfg_json.unlink()
    with pytest.raises(CheckpointError, match="need their config model.json beside them"):
        load_pretrained(weights)
    cfg_json.write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_pretrained(weights)
    cfg_json.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a ddpm export config"):
        load_pretrained(weights)


def test_bad_options_and_existing_outputs(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format must be one of safetensors"):
        export(export_cfg(run_dir, "format=onnx"), tmp_path)
    with pytest.raises(ConfigError, match="plain file stem"):
        export(export_cfg(run_dir, "name=../x"), tmp_path)
    export(export_cfg(run_dir), tmp_path)
    with pytest.raises(ConfigError, match="already holds model.safetensors, model.json"):
        export(export_cfg(run_dir), tmp_path)
    export(export_cfg(run_dir, "overwrite=true"), tmp_path)


def test_cli_one_line_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(SCRIPT), f"ckpt={tmp_path / 'missing.pt'}", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"]
