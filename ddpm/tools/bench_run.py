"""The measurements of ``scripts/benchmark.py``: rows of images/s per model and variant, the diffusers
comparison, the variants of one preset, and the busy-machine check.

Every row times the workloads of :mod:`ddpm.tools.throughput` (``ddpm-train``'s own step, a DDIM run)
with :func:`ddpm.benchmarking.time_it` and keeps achieved GFLOP/s (FLOPs per image x images/s);
:func:`ddpm.tools.bench_report.add_fractions` divides them by the peak at the end.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ddpm.benchmarking import Timing
from ddpm.tools.throughput import PRESET_DATA, Plan, Variant, Workloads, default_variant, first_call, load1, timed, twin_config


@dataclass
class Bench:
    """One benchmark run: where it runs, what it divides by, and the rows so far.

    Args:
        work: the workloads' builder.
        device: the resolved device.
        peak: GFLOP/s per precision measured at the start (for the printed fractions).
        clock: the clock of the timed sections (wall, or process CPU time).
        sample_batch: images of a sampling run.
        models: the rows of :meth:`row` (``result["models"]``).
    """

    work: Workloads
    device: torch.device
    peak: dict[str, float]
    clock: Callable[[], float]
    sample_batch: int
    models: list[dict[str, Any]] = field(default_factory=list)

    def _print(self, label: str, variant: Variant, what: str, rate: str, gflops: float, spread: float) -> None:
        frac = gflops / self.peak[variant.peak_key]
        print(
            f"  {label:<16} {variant.name:<18} {what} {rate}  {gflops:7.1f} GFLOP/s  {frac:5.1%} of the start's {variant.peak_key} peak  ±{spread:.0%}",
            flush=True,
        )

    def measure_train(self, label: str, preset: str, variant: Variant, batch: int, plan: Plan, flops: float, twin: bool) -> dict:
        """Images/s of ``ddpm-train``'s step at ``batch``."""
        torch.manual_seed(0)
        load = load1()
        step, first = first_call(lambda: self.work.train_step(preset, variant, batch, twin), self.device)
        tm = timed(step, self.device, plan, plan.iters, self.clock)
        ips = batch / tm.median
        gflops = flops * ips / 1e9
        self._print(label, variant, f"train b{batch:<3}", f"{ips:8.2f} img/s", gflops, tm.spread)
        return {"images_per_s": ips, "gflops": gflops, "spread": tm.spread, "s_per_step": tm.per_iter, "first_step_s": first, "load1": load}

    def measure_sample(self, label: str, preset: str, variant: Variant, plan: Plan, flops: float, twin: bool) -> dict:
        """Images·steps/s of a DDIM run (a compiled network is timed on its one-step first run: recompiling would count as sampling)."""
        torch.manual_seed(0)
        load = load1()
        b = self.sample_batch
        run, first = first_call(lambda: self.work.sample_run(preset, variant, b, 1, twin), self.device)
        steps = 1 if variant.compile else plan.sample_steps
        if not variant.compile:
            run = self.work.sample_run(preset, variant, b, steps, twin)
        tm = timed(run, self.device, plan, max(1, plan.iters if steps == 1 else 1), self.clock)
        per_eval = Timing([t / steps for t in tm.per_iter])
        ips = b / per_eval.median
        gflops = flops * ips / 1e9
        self._print(label, variant, f"sample b{b:<2}", f"{ips:8.2f} img·step/s", gflops, per_eval.spread)
        return {
            "images_steps_per_s": ips,
            "gflops": gflops,
            "spread": per_eval.spread,
            "s_per_eval": per_eval.per_iter,
            "first_call_s": first,
            "batch": b,
            "load1": load,
        }

    def measure(
        self, preset: str, variant: Variant, batches: tuple[int, ...], plan: Plan, flops: dict, twin: bool = False, do_sample: bool = True
    ) -> dict[str, Any]:
        """Training (at each of ``batches``) and sampling throughput of one network in one variant.

        Args:
            preset: the model preset (the twin's, with ``twin``).
            variant: how it runs.
            batches: training batch sizes (none: sampling only).
            plan: how long to measure.
            flops: FLOPs per image of a training and a sampling step (:meth:`Workloads.flops`).
            twin: diffusers' twin of the preset instead of our U-Net.
            do_sample: also time sampling.
        """
        label = f"{'diffusers' if twin else 'ddpm'}/{preset}"
        res: dict[str, Any] = {"model": label, "variant": variant.name, "precision": variant.peak_key, "train": {}, "sample": None}
        for b in batches:
            res["train"][str(b)] = self.measure_train(label, preset, variant, b, plan, flops["train"], twin)
        if do_sample:
            res["sample"] = self.measure_sample(label, preset, variant, plan, flops["sample"], twin)
        return res

    def row(self, preset: str, variant: Variant, batches: tuple[int, ...], plan: Plan, twin: bool = False) -> dict[str, Any]:
        """A row of the table (:meth:`measure` with the network's size and FLOPs), kept in :attr:`models`."""
        data, size, ch = PRESET_DATA[preset]
        flops = self.work.flops(preset, twin)
        m = self.measure(preset, variant, batches, plan, flops, twin)
        m.update(
            {
                "preset": preset,
                "data": f"{data} {ch}x{size}x{size}",
                "params": self.work.params(preset, twin),
                "train_gflop_per_image": flops["train"] / 1e9,
                "sample_gflop_per_image": flops["sample"] / 1e9,
            }
        )
        self.models.append(m)
        return m


def compare_diffusers(
    bench: Bench, preset: str, ours: dict[str, Any], train_batches: tuple[int, ...], plan: Plan, same_format: bool
) -> dict[str, Any]:
    """diffusers' twin of ``preset`` in fp32 (and, where ours runs channels_last by default and
    ``same_format``, in that format too): the ratios of our images/s to its.

    Args:
        bench: the run.
        preset: the compared preset.
        ours: our row of that preset.
        train_batches: training batch sizes.
        plan: the preset's measuring effort.
        same_format: also measure diffusers in our default memory format.
    """
    import diffusers

    model_cfg = bench.work.model_cfg(preset)
    data, size, ch = PRESET_DATA[preset]
    print(f"diffusers {diffusers.__version__} UNet2DModel matched to {preset}", flush=True)
    d = bench.row(preset, Variant("fp32"), train_batches, plan, twin=True)
    default = default_variant(model_cfg, bench.device)
    same = bench.row(preset, default, train_batches, plan, twin=True) if default.channels_last and same_format else None
    b = str(train_batches[-1])
    vs: dict[str, Any] = {
        "preset": preset,
        "config": f"UNet2DModel({twin_config(model_cfg, size, ch)})",
        "diffusers_version": diffusers.__version__,
        "params_ours": ours["params"],
        "params_diffusers": d["params"],
        "train_batch": int(b),
        "train_ratio": ours["train"][b]["images_per_s"] / d["train"][b]["images_per_s"],
        "train_ratio_per_batch": {k: ours["train"][k]["images_per_s"] / d["train"][k]["images_per_s"] for k in ours["train"]},
        "sample_ratio": ours["sample"]["images_steps_per_s"] / d["sample"]["images_steps_per_s"],
        "ours_variant": ours["variant"],
    }
    if same is not None:
        vs["same_format"] = {
            "variant": same["variant"],
            "train_ratio": ours["train"][b]["images_per_s"] / same["train"][b]["images_per_s"],
            "sample_ratio": ours["sample"]["images_steps_per_s"] / same["sample"]["images_steps_per_s"],
        }
    return vs


def variant_list(cuda: bool, quick_cpu: bool, default_cl: bool, wanted: str | None) -> list[tuple[Variant, bool, bool]]:
    """The variants of the compared preset to measure: (variant, time training, time sampling).

    Args:
        cuda: on a GPU (fp16 and bf16 with channels_last and compile; TF32 is added by :func:`measure_variants`).
        quick_cpu: ``--quick`` on a CPU: compile once, for sampling only (compiling costs about a minute a graph).
        default_cl: ``ddpm-train`` runs channels_last by default here (that row is measured already).
        wanted: only variants whose name holds one of these comma-separated parts (None: all).
    """
    variants = [] if default_cl else [(Variant("channels_last", channels_last=True), True, True)]
    if not quick_cpu:
        variants.append((Variant("compile", compile=True), True, True))
    variants.append((Variant("channels_last+compile", channels_last=True, compile=True), not quick_cpu, True))
    if not cuda:
        variants.append((Variant("bf16 autocast", precision="bf16"), True, True))
    else:
        variants += [
            (Variant("bf16+channels_last", channels_last=True, precision="bf16"), True, True),
            (Variant("bf16+cl+compile", channels_last=True, compile=True, precision="bf16"), True, True),
            (Variant("fp16+channels_last", channels_last=True, precision="fp16"), True, True),
        ]
    if wanted:
        parts = wanted.split(",")
        variants = [v for v in variants if any(w in v[0].name for w in parts)]
    return variants


def measure_variants(
    bench: Bench, preset: str, ours: dict[str, Any], batch: int, plan: Plan, quick: bool, wanted: str | None
) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """The memory-format, compile and precision variants of ``preset``, relative to fp32 eager contiguous.

    Args:
        bench: the run.
        preset: the preset measured in variants.
        ours: its row in the default variant (reused, not measured again).
        batch: the training batch of the variants.
        plan: the preset's measuring effort (the compiled and low-precision variants get a brief one on a CPU).
        quick: ``--quick``.
        wanted: ``--variants`` (None: all of the device).

    Returns:
        The variants' rows (fp32 eager contiguous first) and the fastest variant for training and sampling.
    """
    cpu = bench.device.type == "cpu"
    model_cfg = bench.work.model_cfg(preset)
    default_cl = default_variant(model_cfg, bench.device).channels_last
    brief = Plan(1, 2, 1, 1) if cpu else plan
    flops = bench.work.flops(preset)
    print(f"variants of ddpm/{preset}", flush=True)
    b = str(batch)
    default_row = {
        **ours,
        "variant": "channels_last" if default_cl else "fp32",
        "train": {k: v for k, v in ours["train"].items() if k == b},
    }
    # The table is relative to fp32 eager contiguous: measure it when the default is channels_last.
    out = [bench.measure(preset, Variant("fp32"), (batch,), plan, flops), default_row] if default_cl else [default_row]
    for v, do_train, do_sample in variant_list(not cpu, quick and cpu, default_cl, wanted):
        try:
            out.append(
                bench.measure(
                    preset,
                    v,
                    (batch,) if do_train else (),
                    brief if v.precision != "fp32" or v.compile else plan,
                    flops,
                    do_sample=do_sample,
                )
            )
        except Exception as exc:  # a variant the device cannot run is reported, not fatal
            print(f"  {v.name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", flush=True)
            out.append(
                {"model": f"ddpm/{preset}", "variant": v.name, "train": {}, "sample": None, "error": f"{type(exc).__name__}: {exc}"[:500]}
            )
    if not cpu:  # TF32 as a variant of its own
        out.append(bench.measure(preset, Variant("tf32+channels_last", channels_last=True, tf32=True), (batch,), plan, flops))
    trained = [v for v in out if v["train"].get(b)]
    sampled = [v for v in out if v["sample"]]
    recommended = {
        "train": max(trained, key=lambda v: v["train"][b]["images_per_s"])["variant"] if trained else None,
        "sample": max(sampled, key=lambda v: v["sample"]["images_steps_per_s"])["variant"] if sampled else None,
    }
    return out, recommended


def busy(result: dict[str, Any], start: dict[str, float], end: dict[str, float], load_start: float, over: list[str]) -> dict[str, Any]:
    """Whether the machine was busy during the run, and why: load before the start, a matmul probe that
    changed from start to end, fractions above 1, or repeats spread widely.

    Args:
        result: the run's results (its rows' spreads are read).
        start: the peak measured at the start.
        end: the peak measured at the end.
        load_start: the 1-minute load average before the run.
        over: the rows whose fraction of peak exceeds 1 (:func:`ddpm.tools.bench_report.add_fractions`).
    """
    import os

    reasons = []
    if load_start > 0.5:
        reasons.append(f"load average {load_start:.2f} before the run started (other processes on {os.cpu_count() or 1} logical CPUs)")
    if abs(end["fp32"] - start["fp32"]) / start["fp32"] > 0.15:
        reasons.append(f"matmul speed changed by {end['fp32'] / start['fp32'] - 1:+.0%} between start and end")
    if over:
        reasons.append(f"fractions above 1, the peak was measured low: {'; '.join(over)}")
    models = result["models"]
    spreads = [t["spread"] for m in models for t in m["train"].values()] + [m["sample"]["spread"] for m in models if m["sample"]]
    if spreads and statistics.median(spreads) > 0.2:
        reasons.append(f"median spread of the repeats {statistics.median(spreads):.0%}")
    return {
        "busy": bool(reasons),
        "reasons": reasons,
        "load_start": load_start,
        "load_end": load1(),
        "probe_start": start["fp32"],
        "probe_end": end["fp32"],
    }
