"""Bad input: every case of ``ddpm/tools/bad_inputs.py`` gives one ``error:`` line and exit 2; checkpoints
that load but cannot work are refused by name; sampling never hands back NaN images.

The cases run in-process through the console scripts' own ``main()`` (Hydra and all), which is
what the installed commands run; one case also runs as a real ``ddpm-train`` process, and the
fault drill (``tests/test_faults.py::test_fault_drill_quick``) runs a sample of them as processes.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from ddpm.checkpoint import FORMAT, atomic_save
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import CheckpointError
from ddpm.generate import NonFiniteSamples, generate
from ddpm.models import build_model
from ddpm.pretrained import load_pretrained
from ddpm.samplers import DDIMSampler
from ddpm.schedules import NoiseSchedule
from ddpm.tools import bad_inputs as bad

SCRIPTS = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.name.startswith("ddpm-")}


@pytest.fixture(scope="module")
def bad_files(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("bad_input")
    bad.make_bad_input_files(work, tiny_ckpt)
    return work


def test_at_least_sixty_kinds() -> None:
    assert len({c.name for c in bad.BAD_INPUTS}) == len(bad.BAD_INPUTS) >= 60
    assert set(bad.QUICK_BAD) <= {c.name for c in bad.BAD_INPUTS}


@pytest.mark.parametrize("case", bad.BAD_INPUTS, ids=lambda c: f"{c.cmd}:{c.name}")
def test_bad_input_gives_one_line_and_exit_2(
    case: bad.BadInput,
    bad_files: Path,
    tiny_ckpt: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
) -> None:
    if case.cmd not in SCRIPTS:
        pytest.skip(f"{case.cmd} is not installed")
    main = SCRIPTS[case.cmd].load()
    args = bad.bad_input_args(case, bad_files, tiny_ckpt, tmp_path / "run", data_dir)
    monkeypatch.setattr(sys, "argv", [case.cmd, *args])
    for k, v in case.env.items():
        monkeypatch.setenv(k, v)
    if case.env:
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    err = capfd.readouterr().err
    assert exc.value.code == 2, err
    assert bad.check_one_line(exc.value.code, err, case.expect) is None, err
    assert not (bad_files / "EXECUTED").exists()  # the pickle's payload never ran
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert not ckpt_dir.exists() or not any(ckpt_dir.iterdir())  # failed before any work


def test_bad_input_as_a_real_process(data_dir: Path, tmp_path: Path) -> None:
    """The installed console script: exit code 2 and exactly one line on stderr."""
    exe = Path(sys.executable).parent / "ddpm-train"
    case = next(c for c in bad.BAD_INPUTS if c.name == "zero lr")
    proc = subprocess.run(
        [str(exe), *bad.bad_input_args(case, tmp_path, tmp_path, tmp_path / "run", data_dir)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: train.lr must be > 0, got 0.0\n"
    assert "Traceback" not in proc.stdout


def test_check_one_line_can_fail() -> None:
    assert bad.check_one_line(2, "error: x must be > 0\n", "x must") is None
    assert bad.check_one_line(0, "", "x") == "exit code 0"
    assert bad.check_one_line(2, "error: a\nTraceback\n", "a").startswith("stderr has 2 lines")
    assert bad.check_one_line(2, "error: a\n", "b") == "'b' not in 'error: a'"


# ---------------------------------------------------------------------------- checkpoint contents
@pytest.fixture(scope="module")
def fresh_state() -> dict:
    """The state of an untrained tiny checkpoint (8x8 grey, T=10), built without data or training."""
    cfg = compose_config("train", ["model=tiny", "schedule.T=10", "dataset.image_size=8"])
    sd = build_model(cfg.model, 8, 1).state_dict()
    config = OmegaConf.to_container(cfg, resolve=False)
    return {"format": FORMAT, "step": 0, "config": config, "model": sd, "ema": {k: v.clone() for k, v in sd.items()}}


def _save(tmp_path: Path, state: dict, change=None) -> Path:
    import copy

    state = copy.deepcopy(state)
    if change is not None:
        change(state)
    return atomic_save(state, tmp_path / "ckpt.pt")


def _refused(path: Path, **kw: object) -> str:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"checkpoint {path}"), msg
    return msg


def test_sound_checkpoint_loads(fresh_state: dict, tmp_path: Path) -> None:
    pre = load_pretrained(_save(tmp_path, fresh_state))
    assert pre.shape == (1, 8, 8) and pre.diffusion.T == 10 and pre.step == 0


def test_checkpoint_without_ema(fresh_state: dict, tmp_path: Path) -> None:
    path = _save(tmp_path, fresh_state, lambda s: s.pop("ema"))
    assert _refused(path).endswith("holds no EMA weights ('ema'); pass use_ema=false to use the raw weights")
    assert load_pretrained(path, use_ema=False).shape == (1, 8, 8)  # the raw weights still work


def test_checkpoint_with_weights_of_another_shape(fresh_state: dict, tmp_path: Path) -> None:
    key = next(k for k, v in fresh_state["ema"].items() if v.dim() == 4)
    shape = tuple(fresh_state["ema"][key].shape)
    wider = (shape[0] * 2, *shape[1:])
    path = _save(tmp_path, fresh_state, lambda s: s["ema"].__setitem__(key, torch.zeros(wider)))
    assert _refused(path).endswith(f"the ema weights hold {key} of shape {wider} but the model its config describes needs {shape}")


def test_checkpoint_with_missing_and_extra_weights(fresh_state: dict, tmp_path: Path) -> None:
    key = next(iter(fresh_state["ema"]))
    path = _save(tmp_path, fresh_state, lambda s: s["ema"].pop(key))
    assert _refused(path).endswith(f"the ema weights lack {key} that the model its config describes needs")
    path = _save(tmp_path, fresh_state, lambda s: s["ema"].__setitem__("extra.weight", torch.zeros(2)))
    assert _refused(path).endswith("the ema weights hold extra.weight that the model its config describes does not have")


def test_checkpoint_with_config_keys_missing(fresh_state: dict, tmp_path: Path) -> None:
    def drop(s: dict) -> None:
        s["config"]["train"].pop("objective")
        s["config"]["dataset"].pop("channels")

    assert _refused(_save(tmp_path, fresh_state, drop)).endswith("stores an incomplete config: train.objective, dataset.channels missing")
    assert _refused(_save(tmp_path, fresh_state, lambda s: s.pop("config"))).endswith("stores no training config; it cannot be rebuilt")
    msg = _refused(_save(tmp_path, fresh_state, lambda s: s["config"]["model"].__setitem__("num_heads", 3)))
    assert "stores a config that cannot build its model" in msg


def test_checkpoint_with_nan_weights(fresh_state: dict, tmp_path: Path) -> None:
    def poison(s: dict) -> None:
        key = next(k for k, v in s["ema"].items() if v.is_floating_point() and v.numel() >= 3)
        s["ema"][key].view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])

    total = sum(v.numel() for v in fresh_state["ema"].values() if v.is_floating_point())
    msg = _refused(_save(tmp_path, fresh_state, poison))
    assert msg.endswith(
        f"the ema weights hold 3 non-finite values (NaN or inf) among {total}; they would sample NaN images, use an earlier checkpoint"
    )


# ---------------------------------------------------------------------------- NaN samples
def test_generate_refuses_non_finite_samples() -> None:
    diffusion = GaussianDiffusion(NoiseSchedule.from_config(compose_config("train", ["schedule.T=10"]).schedule), "eps")
    sampler = DDIMSampler(diffusion, steps=3)

    def eps_fn(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[1] = float("nan")  # the second image of each batch diverges
        return out

    with pytest.raises(NonFiniteSamples) as info:
        generate(eps_fn, sampler, (1, 4, 4), num_samples=5, seed=0, batch_size=3, device=torch.device("cpu"))
    assert str(info.value).startswith("sampling produced NaN or inf pixels in 1 of samples 0..2 (first: sample 1); nothing of this batch")
    assert isinstance(info.value, CheckpointError)  # the commands report it as one line, exit 2

    def finite(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    x = generate(finite, sampler, (1, 4, 4), num_samples=5, seed=0, batch_size=3, device=torch.device("cpu"))
    assert x.shape == (5, 1, 4, 4) and torch.isfinite(x).all()
