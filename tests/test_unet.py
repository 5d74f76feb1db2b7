"""The U-Net: shapes, parameter counts, golden outputs, and the fast paths against a plain reference."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ddpm.errors import ConfigError
from ddpm.models import build_model
from ddpm.models.unet import AttentionBlock, ResBlock, UNet, norm_groups

CL = torch.channels_last


def _model(seed: int = 0, **kw) -> UNet:
    """A small U-Net with attention at 8x8, 4x4 and in the middle, random (non-zero) weights."""
    args = dict(
        image_size=16,
        in_channels=3,
        channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8, 4),
        num_heads=2,
        dropout=0.0,
    )
    args.update(kw)
    torch.manual_seed(seed)
    m = UNet(**args)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():  # zero-initialised layers would hide most of the network
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for mod in m.modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.add_(1.0)
    return m


def _inputs(b: int = 3, c: int = 3, size: int = 16, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, size, size, generator=g), torch.tensor([0, 417, 999][:b])


# Plain formulations (the original code): GroupNorm module, then scale-shift as two ops; attention
# by an explicit softmax. The fast paths of ddpm.models.unet must agree with them.
def _ref_resblock(self: ResBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    e = self.emb(F.silu(emb))[:, :, None, None]
    if self.scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
    else:
        h = self.norm2(h + e)
    return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


def _ref_attention(self: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    d = c // self.num_heads
    qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, d, h * w)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (b, heads, d, hw)
    att = torch.softmax(torch.einsum("bndi,bndj->bnij", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bnij,bndj->bndi", att, v).reshape(b, c, h, w)
    return x + self.proj(out)


def _reference(model: UNet) -> UNet:
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if isinstance(mod, ResBlock):
            mod.forward = types.MethodType(_ref_resblock, mod)
        elif isinstance(mod, AttentionBlock):
            mod.forward = types.MethodType(_ref_attention, mod)
    return ref


def _preset(name: str):
    from ddpm.config import ModelConfig

    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(f"conf/model/{name}.yaml"))


@pytest.mark.parametrize(
    ("preset", "channels", "size", "params"),
    [("tiny", 1, 32, 177_505), ("small", 1, 32, 6_946_881), ("small", 3, 32, 6_949_187), ("base", 3, 32, 38_307_203)],
)
def test_preset_parameter_counts(preset: str, channels: int, size: int, params: int) -> None:
    model = build_model(_preset(preset), size, channels)
    assert sum(p.numel() for p in model.parameters()) == params


def test_output_shape_and_zero_init() -> None:
    torch.manual_seed(0)
    model = UNet(32, 1, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,), num_heads=2)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 900])
    out = model(x, t)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the output conv starts at zero: ε̂ = 0 at initialisation


def test_golden_output() -> None:
    """Numbers of the original (pre-fast-path) network with the same weights: the fast paths
    change neither the state_dict layout nor the function. (One channel per group: the norm of
    checkpoints written before ``norm_min_group_channels``.)"""
    model = _model(norm_min_group_channels=1)
    x, t = _inputs()
    with torch.no_grad():
        out = model(x, t)
    assert out[0, 0, 0, :3].tolist() == pytest.approx([-0.1720150, -0.0158675, 0.1118671], abs=2e-5)
    assert float(out.double().abs().mean()) == pytest.approx(0.2918145, rel=1e-5)
    keys = list(model.state_dict())
    assert len(keys) == 184 and "down.2.1.qkv.weight" in keys and "mid.0.norm2.weight" in keys


@pytest.mark.parametrize("scale_shift", [True, False])
def test_fast_path_matches_reference_forward_and_backward(scale_shift: bool) -> None:
    model = _model(scale_shift_norm=scale_shift)
    ref = _reference(model)
    x, t = _inputs()
    out, out_ref = model(x, t), ref(x, t)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    out_ref.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_inference_mode_matches_autograd_mode() -> None:
    """The in-place activations used without autograd give the same numbers."""
    model = _model().eval()
    x, t = _inputs()
    with torch.inference_mode():
        fast = model(x, t)
    torch.testing.assert_close(fast, model(x, t).detach(), rtol=0, atol=0)


def test_channels_last_equals_contiguous_and_stays_channels_last() -> None:
    model = _model()
    x, t = _inputs()
    model_cl = copy.deepcopy(model).to(memory_format=CL)
    seen: list[bool] = []
    for mod in model_cl.modules():
        if isinstance(mod, (ResBlock, AttentionBlock)):
            mod.register_forward_hook(lambda m, i, o: seen.append(o.is_contiguous(memory_format=CL)))
    with torch.no_grad():
        out, out_cl = model(x, t), model_cl(x.to(memory_format=CL), t)
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    assert seen and all(seen), "an activation fell back to NCHW inside the channels_last network"
    assert out_cl.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
def test_attention_uses_fused_kernel(memory_format: torch.memory_format) -> None:
    """SDPA gets unit-stride heads, so it dispatches to the fused kernel, not the math fallback."""
    from torch.profiler import profile

    block = AttentionBlock(64, 4).eval()
    x = torch.randn(2, 64, 8, 8).to(memory_format=memory_format)
    with torch.no_grad(), profile() as prof:
        block(x)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in ops
    assert any("flash_attention" in op or "efficient_attention" in op for op in ops), sorted(ops)


def test_bad_heads_and_sizes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="num_heads"):
        UNet(32, 1, channels=24, channel_mult=(1,), attention_resolutions=(32,), num_heads=5)
    with pytest.raises(ConfigError, match="divisible"):
        UNet(30, 1, channels=16, channel_mult=(1, 2, 2))


@pytest.mark.parametrize(
    ("channels", "min_group", "groups"),
    [(16, 4, 4), (32, 4, 8), (48, 4, 8), (64, 4, 16), (128, 4, 32), (512, 4, 32), (32, 1, 32), (48, 1, 16), (24, 8, 2)],
)
def test_norm_groups(channels: int, min_group: int, groups: int) -> None:
    assert norm_groups(channels, min_group) == groups
    assert channels % groups == 0 and 32 % groups == 0


def test_checkpoint_config_without_group_key_builds_the_old_norm() -> None:
    cfg = OmegaConf.to_container(_preset("mini"))
    del cfg["norm_min_group_channels"]
    old = build_model(OmegaConf.create(cfg), 32, 1)
    assert {m.num_groups for m in old.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}  # one channel per group at 32
    new = build_model(_preset("mini"), 32, 1)
    assert {m.num_groups for m in new.modules() if isinstance(m, torch.nn.GroupNorm)} == {8, 16, 32}  # 32, 64 and 128 (decoder concat)


@pytest.mark.parametrize("preset", ["tiny", "mini", "small"])
@pytest.mark.parametrize("scale_shift", [True, False])
def test_output_depends_on_the_step(preset: str, scale_shift: bool) -> None:
    """With one channel per group, the time embedding added before the norm (no scale-shift) was
    normalised away: the network gave the same output at k = 10 and k = 900."""
    cfg = _preset(preset)
    cfg.scale_shift_norm = scale_shift
    torch.manual_seed(0)
    model = build_model(cfg, 32, 1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would hide any dependence
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        x = torch.randn(1, 1, 32, 32, generator=g).repeat(2, 1, 1, 1)
        out = model(x, torch.tensor([10, 900]))
    assert (out[0] - out[1]).abs().mean() > 1e-2 * out.abs().mean()
