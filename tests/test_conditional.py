"""Class-conditional training and classifier-free guidance: the guidance identities, labels through
the training batch, the config and checkpoint round trip, and ddpm-sample's class grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, tiny_train_overrides
from omegaconf import OmegaConf
from PIL import Image

from ddpm.checkpoint import save_checkpoint
from ddpm.conditioning import class_rows, drop_labels, per_class_accuracy, resolve_num_classes, round_robin_labels
from ddpm.diffusion import GaussianDiffusion
from ddpm.errors import ConfigError, DataError
from ddpm.generate import generate
from ddpm.models import UNet, build_model
from ddpm.pretrained import load_pretrained
from ddpm.sample import sample
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.schedules import NoiseSchedule
from ddpm.train.config import validate_train


def random_unet(num_classes: int | None, seed: int = 0) -> UNet:
    """A tiny network with random weights everywhere (the zero-initialised output layers would hide any difference)."""
    torch.manual_seed(seed)
    net = UNet(16, 1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=1, num_classes=num_classes)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
def test_guidance_scale_zero_is_unconditional_and_one_is_conditional(objective: str) -> None:
    net = random_unet(10)
    diffusion = GaussianDiffusion(
        NoiseSchedule.from_config(compose_config("train", ["schedule=cosine", "schedule.T=100"]).schedule), objective
    )
    x = torch.randn(6, 1, 16, 16)
    k = torch.tensor([0, 10, 30, 50, 70, 99])
    y = torch.tensor([0, 3, 3, 7, 9, 1])
    null = torch.full_like(y, 10)
    with torch.no_grad():
        cond = diffusion.eps_from_output(x, k, net(x, k, y))
        uncond = diffusion.eps_from_output(x, k, net(x, k, null))
        assert not torch.allclose(cond, uncond)  # the labels change the prediction
        assert torch.equal(make_eps_fn(net, diffusion, guidance_scale=0.0)(x, k, y), uncond)
        assert torch.equal(make_eps_fn(net, diffusion, guidance_scale=1.0)(x, k, y), cond)
        assert torch.equal(make_eps_fn(net, diffusion)(x, k), uncond)  # no labels: the null class
        guided = make_eps_fn(net, diffusion, guidance_scale=2.5)(x, k, y)  # both halves in one batch
        torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_unconditional_network_refuses_labels_and_old_configs_build_unconditional() -> None:
    net = random_unet(None)
    with pytest.raises(ValueError, match="unconditional network"):
        net(torch.zeros(1, 1, 16, 16), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    old = OmegaConf.create(  # a model node written before num_classes existed
        {
            "channels": 16,
            "channel_mult": [1, 2],
            "num_res_blocks": 1,
            "attention_resolutions": [],
            "num_heads": 1,
            "dropout": 0.0,
            "scale_shift_norm": True,
        }
    )
    model = build_model(old, 16, 1)
    assert model.num_classes is None and model.class_emb is None
    assert not any(k.startswith("class_emb") for k in model.state_dict())
    cond = build_model(OmegaConf.merge(old, {"num_classes": 10}), 16, 1)
    assert cond.class_emb.weight.shape == (11, 64)  # 10 classes + the null class, embedding width 4 x channels


def test_num_classes_values() -> None:
    ds = OmegaConf.create({"name": "mnist", "num_classes": 10})
    labels = torch.tensor([0, 9, 3])
    assert resolve_num_classes(None, ds, labels) is None
    assert resolve_num_classes("auto", ds, labels) == 10
    assert resolve_num_classes("auto", OmegaConf.create({"name": "x", "num_classes": None}), labels) == 10  # max label + 1
    assert resolve_num_classes(12, ds, labels) == 12
    with pytest.raises(DataError, match="labels 0..9, outside model.num_classes=5"):
        resolve_num_classes(5, ds, labels)
    with pytest.raises(DataError, match="needs class labels"):
        resolve_num_classes("auto", OmegaConf.create({"name": "cats"}), None)
    for bad in ("many", 0, -3, True):
        cfg = compose_config("train", ["model=tiny"])
        cfg.model.num_classes = bad
        with pytest.raises(ConfigError, match="model.num_classes must be null"):
            validate_train(cfg)
    cfg = compose_config("train", ["model=tiny", "train.cond_drop_prob=1.0"])
    with pytest.raises(ConfigError, match="cond_drop_prob must lie in"):
        validate_train(cfg)


def test_drop_labels_uses_the_shared_generator() -> None:
    labels = torch.arange(10_000) % 10
    a = drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(3))
    b = drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)  # every rank, drawing from the same generator, drops the same labels
    dropped = a == 10
    assert torch.equal(a[~dropped], labels[~dropped]) and abs(float(dropped.float().mean()) - 0.2) < 0.02
    assert torch.equal(drop_labels(labels, 0.0, 10, torch.Generator().manual_seed(3)), labels)


def test_class_rows_and_per_class_accuracy() -> None:
    labels = round_robin_labels(25, 4)
    assert labels.tolist()[:6] == [0, 1, 2, 3, 0, 1]
    x = torch.arange(25.0).view(25, 1, 1, 1)
    rows = class_rows(x, labels, 4, 3).flatten().tolist()
    assert rows == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    probs = torch.eye(3)[torch.tensor([0, 1, 1, 2, 0, 0])]
    acc = per_class_accuracy(probs, torch.tensor([0, 1, 2, 2, 0, 1]), 3)
    assert acc["accuracy"] == pytest.approx(4 / 6) and acc["chance"] == pytest.approx(1 / 3)
    assert acc["per_class"] == {
        "0": {"num_samples": 2, "accuracy": 1.0},
        "1": {"num_samples": 2, "accuracy": 0.5},
        "2": {"num_samples": 2, "accuracy": 0.5},
    }


@pytest.fixture(scope="module")
def cond_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional MNIST run (model.num_classes=auto), 10 steps."""
    from ddpm.train import train

    run_dir = tmp_path_factory.mktemp("cond_run")
    extra = {"model.num_classes": "auto", "train.max_steps": 10, "train.cond_drop_prob": 0.3, "runtime.num_threads": 1}
    train(compose_config("train", tiny_train_overrides(data_dir, run_dir / "cache", **extra)), run_dir)
    return run_dir


def test_labels_flow_through_the_training_batch(data_dir: Path, tmp_path: Path) -> None:
    from ddpm.train import Trainer

    over = tiny_train_overrides(data_dir, tmp_path / "cache", **{"train.cond_drop_prob": 0.5})
    plain = Trainer(compose_config("train", over), tmp_path / "a")
    cond = Trainer(compose_config("train", [*over, "model.num_classes=auto"]), tmp_path / "b")
    assert cond.num_classes == 10 and cond.cfg.model.num_classes == 10 and plain.num_classes is None
    x0a, ka, na, ya = plain.global_batch_tensors()
    x0b, kb, nb, yb = cond.global_batch_tensors()
    # the labels are drawn after everything else: a conditional run sees the same images, steps and noise
    assert ya is None and torch.equal(x0a, x0b) and torch.equal(ka, kb) and torch.equal(na, nb)
    idx = cond._epoch_perm(0)[: cond.global_batch]
    true = cond.labels[idx]
    kept = yb != 10
    assert torch.equal(yb[kept], true[kept]) and 0 < int((~kept).sum()) < len(yb)
    # labels reach the network: the loss with the true labels differs from the loss with the null class
    with torch.no_grad():
        for p in cond.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        ls = [cond.diffusion.loss(lambda xk, k, y=y: cond._net_call(xk, k, y), x0b, kb, nb) for y in (true, torch.full_like(true, 10))]
    assert not torch.equal(ls[0], ls[1])


def test_checkpoint_records_the_conditioning(cond_run: Path) -> None:
    state = torch.load(cond_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["num_classes"] == 10 and state["config"]["train"]["cond_drop_prob"] == 0.3
    pre = load_pretrained(cond_run)
    assert pre.model.num_classes == 10
    ema, loaded = state["ema"], pre.model.state_dict()
    assert ema.keys() == loaded.keys() and all(torch.equal(loaded[k], v) for k, v in ema.items())
    assert ema["class_emb.weight"].shape == (11, 64)


def _sample_cfg(ckpt: Path, *extra: str):
    base = [
        "num_samples=20",
        "batch_size=7",
        "sampler.steps=4",
        "gif.frames=0",
        "progress=false",
        "runtime.num_threads=1",
        "save_images=true",
    ]
    return compose_config("sample", [f"ckpt={ckpt}", *base, *extra])


def test_sample_class_grid_and_class_label(cond_run: Path, tmp_path: Path) -> None:
    summary = sample(_sample_cfg(cond_run, "grid_images=20"), tmp_path / "grid")
    assert summary["num_classes"] == 10 and summary["grid_rows"] == "one per class"
    grid = np.asarray(Image.open(tmp_path / "grid" / "samples.png"))
    assert grid.shape[:2] == (10 * 32 + 11 * 2, 2 * 32 + 3 * 2)  # 10 rows (classes) of 2 samples, 2 px padding
    one = sample(_sample_cfg(cond_run, "class_label=3", "guidance_scale=2.0"), tmp_path / "three")
    assert one["class_label"] == 3 and one["guidance_scale"] == 2.0
    same = sample(_sample_cfg(cond_run, "class_label=3"), tmp_path / "three_s1")
    assert same["guidance_scale"] == 1.0
    # sample 13 is of class 3 in the round-robin run too (same seed, same label): the same image
    a = (tmp_path / "grid" / "images" / "000013.png").read_bytes()
    assert a == (tmp_path / "three_s1" / "images" / "000013.png").read_bytes()
    assert a != (tmp_path / "three" / "images" / "000013.png").read_bytes()  # guidance 2 moves it
    with pytest.raises(ConfigError, match=r"class_label=10 is outside the checkpoint's classes 0..9"):
        sample(_sample_cfg(cond_run, "class_label=10"), tmp_path / "bad")


def test_unconditional_checkpoint_refuses_class_options(tiny_ckpt: Path, tmp_path: Path) -> None:
    for opt in ("class_label=3", "guidance_scale=2.0"):
        with pytest.raises(ConfigError, match="need a class-conditional checkpoint"):
            sample(_sample_cfg(tiny_ckpt, opt), tmp_path / opt.split("=")[0])


def test_generate_carries_labels(cond_run: Path) -> None:
    pre = load_pretrained(cond_run)
    eps_fn = make_eps_fn(pre.model, pre.diffusion)
    sampler = build_sampler(pre.cfg.sampler, pre.diffusion)
    labels = torch.tensor([1, 2, 3, 4])
    whole = generate(eps_fn, sampler, pre.shape, 4, 5, 4, torch.device("cpu"), labels=labels)
    split = generate(eps_fn, sampler, pre.shape, 4, 5, 3, torch.device("cpu"), labels=labels)  # batches of 3 and 1
    torch.testing.assert_close(whole, split, rtol=0, atol=1e-5)
    other = generate(eps_fn, sampler, pre.shape, 4, 5, 4, torch.device("cpu"), labels=labels.flip(0))
    assert not torch.allclose(whole, other)


def test_evaluate_reports_per_class_accuracy(cond_run: Path, data_dir: Path, tmp_path: Path) -> None:
    from ddpm.evaluate.classifier import get_classifier
    from ddpm.evaluate.cli import evaluate
    from ddpm.evaluate.coverage import class_probabilities

    over = [f"ckpt={cond_run}", "metrics=[coverage]", "num_samples=20", "batch_size=20", "sampler.steps=4", "progress=false"]
    over += [f"paths.data_dir={data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", "runtime.num_threads=1", "guidance_scale=2.0"]
    result = evaluate(compose_config("evaluate", over), tmp_path / "eval")
    acc = result["class_accuracy"]
    assert result["num_classes"] == 10 and result["guidance_scale"] == 2.0
    assert [v["num_samples"] for v in acc["per_class"].values()] == [2] * 10  # sample i is of class i % 10
    # the same numbers from the saved samples, the shipped classifier and the round-robin labels
    fake = torch.from_numpy(np.load(tmp_path / "eval" / "samples.npz")["images"])
    clf = get_classifier(load_pretrained(cond_run).cfg.dataset, str(data_dir), tmp_path / "cache")
    expected = per_class_accuracy(class_probabilities(clf.model, fake), round_robin_labels(20, 10), 10)
    assert {k: v for k, v in acc.items() if k != "classifier"} == expected
    # the same run's config made unconditional (random weights: the check comes before any sampling)
    config = torch.load(cond_run / "checkpoints" / "last.pt", weights_only=True)["config"]
    config["model"]["num_classes"] = None
    weights = build_model(OmegaConf.create(config["model"]), 32, 1).state_dict()
    save_checkpoint({"step": 1, "model": weights, "ema": weights, "config": config}, tmp_path / "uncond" / "checkpoints", 1, keep=1)
    with pytest.raises(ConfigError, match="guidance_scale needs a class-conditional checkpoint"):
        evaluate(compose_config("evaluate", [*over[1:], f"ckpt={tmp_path / 'uncond'}"]), tmp_path / "e2")
