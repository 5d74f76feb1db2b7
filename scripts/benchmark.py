#!/usr/bin/env python
"""Speed of the ddpm U-Net, measured side by side with HuggingFace diffusers in one process.

For each model preset at its dataset's resolution: parameters, FLOPs per image of a training step
and of a sampling step (torch's FLOP counter over the real forward and backward, ``ddpm.benchmarking``),
training images/s (forward + backward + gradient clipping + AdamW + EMA, as ``ddpm-train`` does it)
and sampling images·steps/s (DDIM, inference mode), each as achieved GFLOP/s and as a fraction of the
peak of its precision: the best large matrix product this machine was measured to run (fp32 and
bf16, at the start and at the end), cross-checked against cores x clock x SIMD width. diffusers'
``UNet2DModel`` configured like our ``small`` preset is measured the same way, giving the two
headline ratios ``vs_diffusers.train_ratio`` and ``vs_diffusers.sample_ratio``. Each preset runs
in the memory format ``ddpm-train`` picks by default on the device (channels_last for CPU networks
of 32+ channels); when that is channels_last, diffusers is measured in it too
(``vs_diffusers.same_format``). The effects of channels_last, torch.compile and the precision
presets are measured on ``small``.

Usage::

    python scripts/benchmark.py --quick                 # < 10 minutes on 2 CPU cores
    python scripts/benchmark.py --out /tmp/bench.json   # full run
    python scripts/benchmark.py --quick --threads 1 --clock cpu --presets tiny,small --train-batches 32 \
        --variants bf16 --out docs/results/benchmark_cpu.json   # the docs' brief run (one core)
    pip install -e ".[bench]"                            # installs diffusers for the comparison

Every number is the median over several timed repeats after warm-up; the spread is
(max - min) / median. A busy machine is detected from the load average at the start and from a
matmul probe repeated at the end, and reported in the table and the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ddpm.benchmarking import count_flops, cpu_simd_peak, measured_peak, merge_peaks
from ddpm.config import ModelConfig, ScheduleConfig
from ddpm.diffusion import GaussianDiffusion
from ddpm.ema import make_ema
from ddpm.models import build_model
from ddpm.runtime import resolve_memory_format
from ddpm.samplers import DDIMSampler, make_eps_fn
from ddpm.schedules import NoiseSchedule

CONF = Path(__file__).resolve().parents[1] / "conf"
# Each preset at the resolution of the dataset it is meant for (conf/experiment).
PRESET_DATA = {
    "tiny": ("mnist", 32, 1),
    "mini": ("mnist", 32, 1),
    "small": ("mnist", 32, 1),
    "base": ("cifar10", 32, 3),
    "large": ("cats", 64, 3),
}


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have]
    return []


# The clock of the timed sections. Wall time by default; with --clock cpu (and --threads 1) the
# process's CPU time, which on a machine shared with other jobs measures what the work costs when
# it runs, rather than how long it waited for a core.
clock = time.perf_counter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_peak(device: torch.device, n: int) -> dict[str, float]:
    """GFLOP/s of the best n x n matrix product per precision (fp32, bf16; tf32 and fp16 on CUDA)."""
    if device.type != "cuda":
        return measured_peak(device, ("fp32", "bf16"), n, 3, clock)
    out = measured_peak(device, ("fp32", "bf16", "fp16"), n, 3, clock)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    out["tf32"] = measured_peak(device, ("fp32",), n, 3, clock)["fp32"]
    torch.backends.cuda.matmul.allow_tf32 = prev
    return out


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per iteration of each timed repeat."""

    per_iter: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.per_iter)

    @property
    def spread(self) -> float:
        return (max(self.per_iter) - min(self.per_iter)) / self.median


def time_it(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int, iters: int) -> Timing:
    """Warm-up calls, then ``repeats`` timed blocks of ``iters`` calls each."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(iters):
            fn()
        sync(device)
        out.append((clock() - t0) / iters)
    return Timing(out)


# --------------------------------------------------------------------------- models
def load_yaml(group: str, name: str) -> Any:
    """A config group file merged over its schema's defaults (as Hydra composes it)."""
    schema = {"model": ModelConfig, "schedule": ScheduleConfig}[group]
    return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(CONF / group / f"{name}.yaml"))


class DiffusersEps(torch.nn.Module):
    """diffusers' UNet2DModel behind our ``model(x, k) -> tensor`` interface."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def diffusers_twin(model_cfg: Any, image_size: int, channels: int) -> torch.nn.Module:
    """diffusers' UNet2DModel with our preset's levels, widths, blocks, attention and heads."""
    from diffusers import UNet2DModel

    widths = [model_cfg.channels * m for m in model_cfg.channel_mult]
    res, down, up_res = image_size, [], []
    for _ in widths:
        down.append("AttnDownBlock2D" if res in model_cfg.attention_resolutions else "DownBlock2D")
        up_res.append(res)
        res //= 2
    up = ["AttnUpBlock2D" if r in model_cfg.attention_resolutions else "UpBlock2D" for r in reversed(up_res)]
    attn_widths = [w for w, r in zip(widths, up_res, strict=True) if r in model_cfg.attention_resolutions] or widths[:1]
    head_dims = {w // model_cfg.num_heads for w in attn_widths}
    if len(head_dims) != 1:
        raise ValueError("diffusers' UNet2DModel takes one attention_head_dim; this preset needs several")
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(widths),
        layers_per_block=model_cfg.num_res_blocks,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=head_dims.pop(),
        resnet_time_scale_shift="scale_shift" if model_cfg.scale_shift_norm else "default",
        norm_num_groups=math.gcd(32, *widths),  # ours: gcd(32, width) per layer
        dropout=model_cfg.dropout,
    )
    return DiffusersEps(unet)


TWIN_KEYS = (
    "sample_size",
    "in_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "attention_head_dim",
    "resnet_time_scale_shift",
    "norm_num_groups",
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


FLOP_BATCH = 2  # the FLOPs of a step are linear in the batch: counted on 2 images, reported per image


def step_flops(make: Callable[[], torch.nn.Module], diffusion: GaussianDiffusion, shape: tuple, device: torch.device) -> dict[str, float]:
    """FLOPs per image of one training step (the real forward, loss and backward) and of one sampling
    step (one network evaluation in inference mode), counted by ``ddpm.benchmarking.count_flops``."""
    step = train_step_fn(make(), Variant("fp32"), diffusion, FLOP_BATCH, shape, device)
    run = sample_fn(make(), Variant("fp32"), diffusion, FLOP_BATCH, shape, device, 1)
    return {"train": count_flops(step) / FLOP_BATCH, "sample": count_flops(run) / FLOP_BATCH}


# --------------------------------------------------------------------------- workloads
def default_variant(model_cfg: Any, device: torch.device) -> Variant:
    """What ``ddpm-train`` runs by default on ``device`` (fp32 preset): the memory format it picks."""
    cl = resolve_memory_format(None, device, int(model_cfg.channels)) == torch.channels_last
    return Variant("fp32 channels_last" if cl else "fp32", channels_last=cl)


@dataclass
class Variant:
    """How the network runs: memory format, torch.compile and autocast precision."""

    name: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    precision: str = "fp32"

    def autocast(self, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
        if self.precision == "fp32":
            return contextlib.nullcontext
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        return lambda: torch.autocast(device.type, dtype=dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def peak_key(self) -> str:
        """The peak this variant's matrix products run against: fp32 (or tf32 when enabled on CUDA), bf16, fp16."""
        if self.precision == "fp32" and torch.cuda.is_available() and torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return self.precision


def train_step_fn(
    model: torch.nn.Module, variant: Variant, diffusion: GaussianDiffusion, batch: int, shape: tuple, device: torch.device
) -> Callable[[], None]:
    """One optimizer step exactly as ``ddpm-train`` takes it (minus data loading, which is an
    index into an in-memory tensor there): GaussianDiffusion.loss, backward, clip, AdamW, EMA."""
    model = model.to(memory_format=variant.memory_format).train()
    ema = make_ema(model, 0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    net = torch.compile(model) if variant.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=variant.precision == "fp16")
    autocast = variant.autocast(device)
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.rand((batch, *shape), generator=g, device=device) * 2 - 1

    def call(xk: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        with autocast():
            return net(xk.to(memory_format=variant.memory_format), k)

    def step() -> None:
        k = diffusion.sample_timesteps(batch, g, device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        loss = diffusion.loss(call, x0, k, noise)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ema.update_parameters(model)

    return step


def sample_fn(
    model: torch.nn.Module, variant: Variant, diffusion: GaussianDiffusion, batch: int, shape: tuple, device: torch.device, steps: int
) -> Callable[[], None]:
    """A DDIM run of ``steps`` network evaluations on ``batch`` images, in inference mode."""
    model = model.to(memory_format=variant.memory_format).eval()
    net = torch.compile(model) if variant.compile else model
    eps_fn = make_eps_fn(net, diffusion, variant.autocast(device))
    sampler = DDIMSampler(diffusion, steps=steps)
    x_T = torch.randn((batch, *shape), generator=torch.Generator(device).manual_seed(0), device=device).to(
        memory_format=variant.memory_format
    )

    def run() -> None:
        sampler.sample(eps_fn, x_T)

    return run


@dataclass
class Plan:
    """How long to measure: warm-up calls, timed repeats and calls per repeat."""

    warmup: int
    repeats: int
    iters: int
    sample_steps: int


def measure_model(
    label: str,
    make: Callable[[], torch.nn.Module],
    shape: tuple,
    device: torch.device,
    diffusion: GaussianDiffusion,
    peak: dict[str, float],
    plan: Plan,
    variant: Variant,
    train_batches: tuple[int, ...],
    sample_batch: int,
    flops: dict[str, float],
    do_sample: bool = True,
) -> dict[str, Any]:
    """Training and sampling throughput of one model in one variant (fractions of peak: :func:`add_fractions`)."""
    res: dict[str, Any] = {"model": label, "variant": variant.name, "precision": variant.peak_key, "train": {}, "sample": None}
    for b in train_batches:
        torch.manual_seed(0)
        load = os.getloadavg()[0]
        t_build = time.perf_counter()
        step = train_step_fn(make(), variant, diffusion, b, shape, device)
        step()  # first call: compile / allocator warm-up, timed separately
        sync(device)
        first = time.perf_counter() - t_build
        tm = time_it(step, device, plan.warmup, plan.repeats, plan.iters)
        ips = b / tm.median
        gflops = flops["train"] * ips / 1e9
        res["train"][str(b)] = {
            "images_per_s": ips,
            "gflops": gflops,
            "spread": tm.spread,
            "s_per_step": tm.per_iter,
            "first_step_s": first,
            "load1": load,
        }
        print(
            f"  {label:<16} {variant.name:<18} train b{b:<3} {ips:8.2f} img/s  {gflops:7.1f} GFLOP/s  {gflops / peak[variant.peak_key]:5.1%} of the start's {variant.peak_key} peak  ±{tm.spread:.0%}",
            flush=True,
        )
    if do_sample:
        torch.manual_seed(0)
        load = os.getloadavg()[0]
        t_build = time.perf_counter()
        run1 = sample_fn(make(), variant, diffusion, sample_batch, shape, device, 1)
        run1()
        sync(device)
        first = time.perf_counter() - t_build
        run = sample_fn(make(), variant, diffusion, sample_batch, shape, device, plan.sample_steps) if not variant.compile else None
        if run is None:  # reuse the compiled network: recompiling would be timed as sampling
            run = run1
            steps = 1
        else:
            steps = plan.sample_steps
        tm = time_it(run, device, plan.warmup, plan.repeats, max(1, plan.iters if steps == 1 else 1))
        per_eval = Timing([t / steps for t in tm.per_iter])
        ips = sample_batch / per_eval.median
        gflops = flops["sample"] * ips / 1e9
        res["sample"] = {
            "images_steps_per_s": ips,
            "gflops": gflops,
            "spread": per_eval.spread,
            "s_per_eval": per_eval.per_iter,
            "first_call_s": first,
            "batch": sample_batch,
            "load1": load,
        }
        print(
            f"  {label:<16} {variant.name:<18} sample b{sample_batch:<2} {ips:8.2f} img·step/s  {gflops:7.1f} GFLOP/s  {gflops / peak[variant.peak_key]:5.1%} of the start's {variant.peak_key} peak  ±{per_eval.spread:.0%}",
            flush=True,
        )
    return res


# --------------------------------------------------------------------------- report
def fmt_row(cells: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [fmt_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt_row(r, widths) for r in rows]
    return "\n".join(lines)


def cell_train(m: dict, b: int) -> str:
    t = m["train"].get(str(b))
    return "-" if t is None else f"{t['images_per_s']:.1f} ({t['frac_peak']:.0%}) ±{t['spread']:.0%}"


def cell_sample(m: dict) -> str:
    s = m["sample"]
    return "-" if s is None else f"{s['images_steps_per_s']:.1f} ({s['frac_peak']:.0%}) ±{s['spread']:.0%}"


def add_fractions(result: dict[str, Any], peak: dict[str, float]) -> list[str]:
    """Every row's achieved GFLOP/s as a fraction of the peak of its precision (``frac_peak``, in
    place); returns the rows whose fraction exceeds 1, which only a peak measured too low can give."""
    over = []
    rows = [*result["models"], *result.get("variants", [])]
    for m in rows:
        key = m.get("precision", "fp32")
        for b, tr in m["train"].items():
            tr["frac_peak"] = tr["gflops"] / peak[key]
            if tr["frac_peak"] > 1:
                over.append(f"{m['model']} {m['variant']} train b{b}: {tr['frac_peak']:.0%}")
        if m["sample"]:
            m["sample"]["frac_peak"] = m["sample"]["gflops"] / peak[key]
            if m["sample"]["frac_peak"] > 1:
                over.append(f"{m['model']} {m['variant']} sample: {m['sample']['frac_peak']:.0%}")
    return over


def report(result: dict) -> str:
    pk = result["peak"]
    out = [
        f"machine: {result['machine']['cpu']} ({result['machine']['logical_cpus']} logical CPUs, torch threads {result['machine']['torch_threads']}, "
        f"{result['machine']['clock']} clock), "
        f"device {result['machine']['device']}, torch {result['machine']['torch']}",
        "peak (best {n}x{n} matrix product at start and end): ".format(n=pk["gemm_n"])
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in pk["measured"].items()),
    ]
    simd = pk.get("simd")
    if simd:
        out.append(
            f"data-sheet peak: fp32 {simd['fp32']:.1f}, bf16 {simd['bf16']:.1f} GFLOP/s "
            f"(measured / data sheet: fp32 {pk['measured']['fp32'] / simd['fp32']:.0%}, bf16 {pk['measured']['bf16'] / simd['bf16']:.0%}); "
            f"assumes {simd['assumes']}"
        )
    out += [
        "",
        "images/s (fraction of the peak of the row's precision; FLOPs counted over the real forward and backward) ± spread (max-min)/median",
    ]
    rows = []
    for m in result["models"]:
        bs = sorted(int(b) for b in m["train"])
        rows.append(
            [
                m["model"],
                m["variant"],
                m["data"],
                f"{m['params'] / 1e6:.2f} M",
                f"{m['train_gflop_per_image']:.2f}",
                f"{m['sample_gflop_per_image']:.2f}",
                cell_train(m, bs[0]) if bs else "-",
                cell_train(m, bs[1]) if len(bs) > 1 else "-",
                cell_sample(m),
            ]
        )
    out.append(
        table(
            rows,
            [
                "model",
                "variant",
                "data",
                "params",
                "train GFLOP/img",
                "sample GFLOP/img·step",
                f"train b{result['train_batches'][0]}",
                f"train b{result['train_batches'][1]}" if len(result["train_batches"]) > 1 else "train (2nd batch)",
                f"sample b{result['sample_batch']} (img·step/s)",
            ],
        )
    )
    vs = result.get("vs_diffusers")
    if vs:
        out += [
            "",
            f"vs diffusers ({vs['config']}, params ours {vs['params_ours']:,} / diffusers {vs['params_diffusers']:,}):",
            f"  train ratio (ours {vs['ours_variant']} / diffusers fp32, images/s, batch {vs['train_batch']}): {vs['train_ratio']:.2f}",
            f"  sample ratio (ours {vs['ours_variant']} / diffusers fp32, images·steps/s, batch {result['sample_batch']}): {vs['sample_ratio']:.2f}",
        ]
        same = vs.get("same_format")
        if same:
            out += [
                f"  with diffusers also in {same['variant']}: train ratio {same['train_ratio']:.2f}, sample ratio {same['sample_ratio']:.2f}",
            ]
    if result.get("variants"):
        out += ["", f"variants of {result['variant_model']} (our U-Net): relative to fp32 eager contiguous"]
        vrows = []
        base = result["variants"][0]
        for v in result["variants"]:
            tr = "-"
            b = str(result["variant_train_batch"])
            if v["train"].get(b) and base["train"].get(b):
                tr = (
                    f"{v['train'][b]['images_per_s']:.2f} img/s (x{v['train'][b]['images_per_s'] / base['train'][b]['images_per_s']:.2f}, "
                    f"{v['train'][b]['frac_peak']:.0%} of {v.get('precision', 'fp32')})"
                )
            sa = "-"
            if v["sample"] and base["sample"]:
                sa = (
                    f"{v['sample']['images_steps_per_s']:.1f} img·step/s (x{v['sample']['images_steps_per_s'] / base['sample']['images_steps_per_s']:.2f}, "
                    f"{v['sample']['frac_peak']:.0%} of {v.get('precision', 'fp32')})"
                )
            first = v["sample"]["first_call_s"] if v["sample"] else None
            vrows.append([v["variant"], tr, sa, f"{first:.0f} s" if first is not None else "-"])
        out.append(
            table(
                vrows,
                ["variant", f"train b{result['variant_train_batch']}", f"sample b{result['sample_batch']}", "first sample call (wall)"],
            )
        )
        rec = result.get("recommended")
        if rec:
            out.append(f"fastest on this device: training {rec['train']}, sampling {rec['sample']}")
    busy = result["busy"]
    out += [
        "",
        f"load average at start {busy['load_start']:.2f}, at end {busy['load_end']:.2f}; fp32 matmul probe start {busy['probe_start']:.1f} / end {busy['probe_end']:.1f} GFLOP/s",
        ("BUSY MACHINE: " + "; ".join(busy["reasons"])) if busy["busy"] else "machine looked idle during the run",
        f"wall time {result['wall_s']:.0f} s",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats, no `large`, compile measured for sampling only (< 10 min on 2 cores)"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON output (default outputs/benchmark/<timestamp>.json)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--presets", default=None, help="comma-separated model presets (default tiny,mini,small,base[,large])")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--no-variants", action="store_true", help="skip channels_last / compile / precision variants")
    p.add_argument(
        "--variants", default=None, help="only these variants of --compare, by name or part of it (e.g. bf16); default: all of the device"
    )
    p.add_argument("--no-same-format", action="store_true", help="measure diffusers in its own format only (not also in ours)")
    p.add_argument("--gemm-n", type=int, default=4096, help="size of the square matrix product that measures the peak")
    p.add_argument("--train-batches", default="32,64", help="training batch sizes")
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: time by process CPU time (use with --threads 1 on a busy machine)"
    )
    p.add_argument("--compare", default="small", help="preset compared with diffusers and measured in variants")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    if args.clock == "cpu":
        if torch.get_num_threads() != 1 or args.device not in ("auto", "cpu") or torch.cuda.is_available():
            sys.exit("error: --clock cpu measures one CPU thread: use it with --threads 1 on a CPU")
        clock = time.process_time
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; TF32 is a variant
        torch.backends.cudnn.allow_tf32 = False
    quick = args.quick
    presets = (
        args.presets.split(",")
        if args.presets
        else (["tiny", "mini", "small", "base"] if quick else ["tiny", "mini", "small", "base", "large"])
    )
    for name in presets:
        if name not in PRESET_DATA:
            sys.exit(f"error: unknown preset {name!r}; choose from {', '.join(PRESET_DATA)}")
    train_batches = tuple(int(b) for b in args.train_batches.split(","))
    cpu = device.type == "cpu"
    # Per-preset measuring effort: (warm-up, repeats, iterations per repeat, sampler steps per run).
    if quick:
        plans = {
            "tiny": Plan(2, 3, 3, 4),
            "mini": Plan(2, 3, 2, 3),
            "small": Plan(1, 3, 1, 2),
            "base": Plan(1, 2, 1, 1),
            "large": Plan(1, 2, 1, 1),
        }
    else:
        plans = {
            "tiny": Plan(3, 5, 5, 8),
            "mini": Plan(3, 5, 3, 6),
            "small": Plan(2, 5, 2, 4),
            "base": Plan(2, 3, 1, 2),
            "large": Plan(1, 3, 1, 2),
        }
    if not cpu:
        plans = {k: Plan(5, 5, 10, 10) for k in plans}

    print(f"peak: timing {args.gemm_n}x{args.gemm_n} matrix products on {device} ...", flush=True)
    peak = machine_peak(device, args.gemm_n)
    print("  " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()) + f" (load average {load_start:.2f})", flush=True)
    simd = cpu_simd_peak(torch.get_num_threads()) if cpu else None
    if simd:
        print(
            f"  data sheet: fp32 {simd['fp32']:.1f}, bf16 {simd['bf16']:.1f} GFLOP/s; measured / data sheet: "
            f"fp32 {peak['fp32'] / simd['fp32']:.0%}, bf16 {peak['bf16'] / simd['bf16']:.0%} ({simd['assumes']})",
            flush=True,
        )
    schedule = NoiseSchedule.from_config(load_yaml("schedule", "linear"))
    diffusion = GaussianDiffusion(schedule, "eps")
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "clock": args.clock,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "peak": {"gemm_n": args.gemm_n, "start": peak, "simd": simd},
        "train_batches": list(train_batches),
        "sample_batch": args.sample_batch,
        "notes": (
            "FLOPs per image counted by torch.utils.flop_counter.FlopCounterMode over one real training step (forward, loss, "
            "backward) and one sampling step (matrix products, convolutions and attention; a multiply-add is 2 FLOPs). "
            "frac_peak = achieved GFLOP/s / the best matrix product of the row's precision at the start or the end (peak.measured)."
        ),
        "models": [],
    }

    def run(
        label: str,
        make: Callable[[], torch.nn.Module],
        preset: str,
        variant: Variant,
        batches: tuple[int, ...],
        plan: Plan,
        do_sample: bool = True,
    ) -> dict:
        data, size, ch = PRESET_DATA[preset]
        shape = (ch, size, size)
        model = make()
        flops = step_flops(lambda: make().to(device), diffusion, shape, device)
        m = measure_model(
            label, lambda: make().to(device), shape, device, diffusion, peak, plan, variant, batches, args.sample_batch, flops, do_sample
        )
        m.update(
            {
                "preset": preset,
                "data": f"{data} {ch}x{size}x{size}",
                "params": n_params(model),
                "train_gflop_per_image": flops["train"] / 1e9,
                "sample_gflop_per_image": flops["sample"] / 1e9,
            }
        )
        result["models"].append(m)
        return m

    baseline = Variant("fp32")
    ours_small = None
    for preset in presets:
        cfg = load_yaml("model", preset)
        data, size, ch = PRESET_DATA[preset]
        print(f"{preset}: {data} {ch}x{size}x{size}", flush=True)
        # --quick on a CPU: the big presets at the first batch size only (a step takes many seconds).
        batches = train_batches[:1] if quick and cpu and preset in ("base", "large") else train_batches
        default = default_variant(cfg, device)
        m = run(f"ddpm/{preset}", lambda cfg=cfg, size=size, ch=ch: build_model(cfg, size, ch), preset, default, batches, plans[preset])
        if preset == args.compare:
            ours_small = m

    if not args.no_diffusers and args.compare in presets:
        try:
            import diffusers
        except ImportError:
            print("diffusers is not installed (pip install -e '.[bench]'): comparison skipped", flush=True)
        else:
            cfg = load_yaml("model", args.compare)
            data, size, ch = PRESET_DATA[args.compare]
            print(f"diffusers {diffusers.__version__} UNet2DModel matched to {args.compare}", flush=True)
            twin = diffusers_twin(cfg, size, ch)
            cfg_text = ", ".join(f"{k}={v}" for k, v in twin.unet.config.items() if k in TWIN_KEYS)
            d = run(
                f"diffusers/{args.compare}",
                lambda: diffusers_twin(cfg, size, ch),
                args.compare,
                baseline,
                train_batches,
                plans[args.compare],
            )
            same = None
            default = default_variant(cfg, device)
            if default.channels_last and not args.no_same_format:  # ours runs channels_last by default here: so can diffusers
                same = run(
                    f"diffusers/{args.compare}",
                    lambda: diffusers_twin(cfg, size, ch),
                    args.compare,
                    default,
                    train_batches,
                    plans[args.compare],
                )
            b = str(train_batches[-1])
            result["vs_diffusers"] = {
                "preset": args.compare,
                "config": f"UNet2DModel({cfg_text})",
                "diffusers_version": diffusers.__version__,
                "params_ours": ours_small["params"],
                "params_diffusers": d["params"],
                "train_batch": int(b),
                "train_ratio": ours_small["train"][b]["images_per_s"] / d["train"][b]["images_per_s"],
                "train_ratio_per_batch": {
                    k: ours_small["train"][k]["images_per_s"] / d["train"][k]["images_per_s"] for k in ours_small["train"]
                },
                "sample_ratio": ours_small["sample"]["images_steps_per_s"] / d["sample"]["images_steps_per_s"],
                "ours_variant": ours_small["variant"],
            }
            if same is not None:
                result["vs_diffusers"]["same_format"] = {
                    "variant": same["variant"],
                    "train_ratio": ours_small["train"][b]["images_per_s"] / same["train"][b]["images_per_s"],
                    "sample_ratio": ours_small["sample"]["images_steps_per_s"] / same["sample"]["images_steps_per_s"],
                }

    if not args.no_variants and args.compare in presets:
        vpreset = args.compare
        cfg = load_yaml("model", vpreset)
        data, size, ch = PRESET_DATA[vpreset]
        vb = (train_batches[0],)
        result["variant_model"], result["variant_train_batch"] = f"ddpm/{vpreset}", vb[0]
        # The memory format ddpm-train picks by default here is the row measured above; the other
        # one is measured now. --quick on a CPU compiles once (channels_last + compile, sampling
        # only): compiling costs about a minute a graph.
        default_cl = default_variant(cfg, device).channels_last
        variants = [] if default_cl else [(Variant("channels_last", channels_last=True), True, True)]
        if not (quick and cpu):
            variants.append((Variant("compile", compile=True), True, True))
        variants.append((Variant("channels_last+compile", channels_last=True, compile=True), not (quick and cpu), True))
        if cpu:
            variants.append((Variant("bf16 autocast", precision="bf16"), True, True))
        else:
            variants += [
                (Variant("bf16+channels_last", channels_last=True, precision="bf16"), True, True),
                (Variant("bf16+cl+compile", channels_last=True, compile=True, precision="bf16"), True, True),
                (Variant("fp16+channels_last", channels_last=True, precision="fp16"), True, True),
            ]
        if args.variants:
            wanted = args.variants.split(",")
            variants = [v for v in variants if any(w in v[0].name for w in wanted)]
        brief = Plan(1, 2, 1, 1) if cpu else plans[vpreset]

        def make_v() -> torch.nn.Module:
            return build_model(cfg, size, ch).to(device)

        vflops = step_flops(make_v, diffusion, (ch, size, size), device)

        def measure_v(v: Variant, plan: Plan, do_train: bool = True, do_sample: bool = True) -> dict[str, Any]:
            return measure_model(
                f"ddpm/{vpreset}",
                make_v,
                (ch, size, size),
                device,
                diffusion,
                peak,
                plan,
                v,
                vb if do_train else (),
                args.sample_batch,
                vflops,
                do_sample,
            )

        print(f"variants of ddpm/{vpreset}", flush=True)
        default_row = {
            **ours_small,
            "variant": "channels_last" if default_cl else baseline.name,
            "train": {k: v for k, v in ours_small["train"].items() if k == str(vb[0])},
        }
        # The table is relative to fp32 eager contiguous: measure it when the default is channels_last.
        out = [measure_v(baseline, plans[vpreset]), default_row] if default_cl else [default_row]
        for v, do_train, do_sample in variants:
            try:
                m = measure_v(v, brief if v.precision != "fp32" or v.compile else plans[vpreset], do_train, do_sample)
            except Exception as exc:  # a variant the device cannot run is reported, not fatal
                print(f"  {v.name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
                m = {
                    "model": f"ddpm/{vpreset}",
                    "variant": v.name,
                    "train": {},
                    "sample": None,
                    "error": f"{type(exc).__name__}: {exc}"[:500],
                }
            out.append(m)
        if device.type == "cuda":  # TF32 as a variant of its own
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            out.append(measure_v(Variant("tf32+channels_last", channels_last=True), plans[vpreset]))
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        result["variants"] = out
        b = str(vb[0])
        trained = [v for v in out if v["train"].get(b)]
        sampled = [v for v in out if v["sample"]]
        result["recommended"] = {
            "train": max(trained, key=lambda v: v["train"][b]["images_per_s"])["variant"] if trained else None,
            "sample": max(sampled, key=lambda v: v["sample"]["images_steps_per_s"])["variant"] if sampled else None,
        }

    end_peak = machine_peak(device, args.gemm_n)
    probe_end = end_peak["fp32"]
    result["peak"]["end"] = end_peak
    result["peak"]["measured"] = best = merge_peaks(peak, end_peak)
    over = add_fractions(result, best)
    load_end = os.getloadavg()[0]
    ncpu = os.cpu_count() or 1
    reasons = []
    if load_start > 0.5:
        reasons.append(f"load average {load_start:.2f} before the run started (other processes on {ncpu} logical CPUs)")
    if abs(probe_end - peak["fp32"]) / peak["fp32"] > 0.15:
        reasons.append(f"matmul speed changed by {probe_end / peak['fp32'] - 1:+.0%} between start and end")
    if over:
        reasons.append(f"fractions above 1, the peak was measured low: {'; '.join(over)}")
    spreads = [t["spread"] for m in result["models"] for t in m["train"].values()] + [
        m["sample"]["spread"] for m in result["models"] if m["sample"]
    ]
    if spreads and statistics.median(spreads) > 0.2:
        reasons.append(f"median spread of the repeats {statistics.median(spreads):.0%}")
    result["busy"] = {
        "busy": bool(reasons),
        "reasons": reasons,
        "load_start": load_start,
        "load_end": load_end,
        "probe_start": peak["fp32"],
        "probe_end": probe_end,
    }
    result["wall_s"] = time.perf_counter() - wall0

    out_path = args.out or Path("outputs/benchmark") / f"{dt.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))  # the measurements first, whatever the table does
    text = report(result)
    print("\n" + text)
    result["table"] = text
    out_path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out_path}")
    return result


if __name__ == "__main__":
    main()
