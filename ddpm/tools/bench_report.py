"""The text report of ``scripts/benchmark.py`` and the fractions of peak it shows.

:func:`add_fractions` divides every row's achieved GFLOP/s by the peak of its precision (the best of
the probes at the start and the end); :func:`report` writes the machine, the table of models, the
diffusers ratios, the variants and the busy-machine verdict as text.
"""

from __future__ import annotations

from typing import Any

from ddpm.tables import markdown_table


def table(rows: list[list[str]], header: list[str]) -> str:
    """A markdown table of text cells."""
    return markdown_table(header, rows)


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
