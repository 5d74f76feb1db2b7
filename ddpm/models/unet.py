"""The DDPM U-Net (Ho et al. 2020, with the improvements of Nichol & Dhariwal 2021).

Residual blocks with a sinusoidal time embedding (optionally injected as a scale-shift of the
normalised activations), multi-head self-attention at chosen resolutions, dropout, strided-conv
downsampling and nearest-upsample + conv upsampling (no transposed conv, hence no checkerboard).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.errors import ConfigError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` of shape (B,) into (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm_groups(channels: int, min_group_channels: int = 4, max_groups: int = 32) -> int:
    """GroupNorm groups for a layer: the most groups dividing both ``channels`` and 32 (the
    paper's count) that keep at least ``min_group_channels`` channels each (1: ``gcd(32, C)``).

    One channel per group is instance norm: it removes each channel's mean, so a narrow network
    (32 channels: 32 groups) loses the global brightness of the image and, without scale-shift,
    the time embedding added before the norm (it is a per-channel constant).
    """
    g = math.gcd(max_groups, channels)
    while g > 1 and channels // g < min_group_channels:
        g //= 2
    return g


def norm(channels: int, min_group_channels: int = 4) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, min_group_channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with the time embedding added (or applied as scale-shift)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, scale_shift: bool, group: int = 4) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = norm(cin, group)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout if scale_shift else cout)
        self.norm2 = norm(cout, group)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # SiLU in place where no autograd graph is recorded: saves one activation-sized buffer.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        e = self.emb(F.silu(emb)).to(h.dtype)
        if self.scale_shift:
            # GroupNorm's affine and the scale-shift fold into one per-(sample, channel) affine
            # map, applied by a single addcmul: gamma*(1+s), beta*(1+s)+shift.
            scale, shift = e.chunk(2, dim=1)
            n2 = self.norm2
            gain = (1 + scale) * n2.weight
            bias = torch.addcmul(shift, 1 + scale, n2.bias)
            h = F.group_norm(h, n2.num_groups, eps=n2.eps)
            h = torch.addcmul(bias[:, :, None, None], h, gain[:, :, None, None])
        else:
            h = self.norm2(h + e[:, :, None, None])
        h = self.conv2(self.dropout(F.silu(h, inplace=inplace)))
        # The conv output is not needed by its backward, so the residual can be added in place.
        return h.add_(self.skip(x))


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, group: int = 4) -> None:
        super().__init__()
        if channels % num_heads:
            raise ConfigError(f"model.num_heads={num_heads} must divide the channel count {channels}")
        self.num_heads = num_heads
        self.norm = norm(channels, group)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # Tokens with the head dimension last and unit-stride: the layout the fused (flash)
        # attention kernels require; otherwise SDPA falls back to the slow math path on CPU.
        # For channels_last activations this is a free view, for NCHW one copy.
        qkv = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).contiguous()  # (b, hw, 3c)
        q, k, v = qkv.view(b, h * w, 3, self.num_heads, c // self.num_heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return x + self.proj(out.contiguous(memory_format=fmt))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """ε-network ε_θ(x_k, k) for images of ``in_channels`` x ``image_size`` x ``image_size``.

    Args:
        image_size: side of the (square) input; must be divisible by 2^(len(channel_mult) - 1).
        in_channels: image channels (1 grey, 3 RGB); the output has the same count.
        channels: base width; level i has ``channels * channel_mult[i]`` channels.
        channel_mult: width multiplier of each resolution level.
        num_res_blocks: residual blocks per level (the decoder has one more).
        attention_resolutions: feature-map sides at which self-attention is applied.
        num_heads: attention heads.
        dropout: dropout rate inside residual blocks.
        scale_shift_norm: inject the time embedding as a scale-shift of the normalisation.
        norm_min_group_channels: fewest channels per GroupNorm group (see :func:`norm_groups`).
        num_classes: class count of a conditional network (None: unconditional). Label
            ``num_classes`` is the learned null class (classifier-free guidance).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_heads: int = 4,
        dropout: float = 0.1,
        scale_shift_norm: bool = True,
        norm_min_group_channels: int = 4,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if channels <= 0 or num_res_blocks <= 0 or not channel_mult or min(channel_mult) <= 0:
            raise ConfigError("model.channels, model.channel_mult and model.num_res_blocks must be positive")
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ConfigError(
                f"image size {image_size} is not divisible by 2^{len(channel_mult) - 1} (model.channel_mult has {len(channel_mult)} levels)"
            )
        if norm_min_group_channels < 1:
            raise ConfigError(f"model.norm_min_group_channels must be >= 1, got {norm_min_group_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {dropout}")
        self.image_size, self.in_channels = image_size, in_channels
        emb_dim = 4 * channels
        self.base_channels = channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None and num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1 or null, got {num_classes}")
        self.num_classes = num_classes
        # One row per class plus the null class; added to the time embedding.
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)

        group = norm_min_group_channels

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            layers = [ResBlock(cin, cout, emb_dim, dropout, scale_shift_norm, group)]
            if res in attention_resolutions:
                layers.append(AttentionBlock(cout, num_heads, group))
            return nn.ModuleList(layers)

        self.down = nn.ModuleList()
        skips, ch, res = [channels], channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, channels * mult, res))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm, group),
                AttentionBlock(ch, num_heads, group),
                ResBlock(ch, ch, emb_dim, dropout, scale_shift_norm, group),
            ]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = block(ch + skips.pop(), channels * mult, res)
                ch = channels * mult
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(layers)
        self.out = nn.Sequential(norm(ch, group), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """ε (or x_0, v) of ``x`` at steps ``t``; ``y``: (B,) class labels of a conditional network (None: the null class)."""
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("class labels passed to an unconditional network")
        h = self.stem(x)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def build_model(model_cfg, image_size: int, in_channels: int) -> UNet:
    """Build a :class:`UNet` from a ``model`` config node and the dataset's image shape."""
    return UNet(
        image_size=image_size,
        in_channels=in_channels,
        channels=int(model_cfg.channels),
        channel_mult=tuple(model_cfg.channel_mult),
        num_res_blocks=int(model_cfg.num_res_blocks),
        attention_resolutions=tuple(model_cfg.attention_resolutions),
        num_heads=int(model_cfg.num_heads),
        dropout=float(model_cfg.dropout),
        scale_shift_norm=bool(model_cfg.scale_shift_norm),
        # Checkpoints from before the key existed were trained with one channel per group.
        norm_min_group_channels=int(model_cfg.get("norm_min_group_channels", 1)),
        # Checkpoints from before conditioning existed are unconditional.
        num_classes=_num_classes(model_cfg.get("num_classes")),
    )


def _num_classes(value: object) -> int | None:
    """``model.num_classes`` as built: None or an int (``auto`` is resolved from the data before building)."""
    if value is None:
        return None
    if value == "auto":
        raise ConfigError("model.num_classes=auto must be resolved from the dataset's labels before the model is built")
    return int(value)
