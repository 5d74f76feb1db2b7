"""Choose sampler defaults by measured quality: score one checkpoint's samples under several
sampler settings with the domain classifier (:class:`ddpm.evaluate.sample_quality.SampleScorer`).

    python scripts/sampler_choice.py --ckpt outputs/mnist --samples 1000 \\
        --sampler "dpm k-grid=sampler=dpm_solver sampler.grid=time" \\
        --sampler "dpm λ-grid=sampler=dpm_solver sampler.grid=logsnr"

A ``--sampler`` is ``label=override ...`` on the ``sample`` config (what ``ddpm-sample`` takes).
Every setting draws the same seeds. Prints a markdown table and writes JSON (``--out``).

``--preset low-evals`` adds the settings for choosing a sampler at 10-50 network evaluations
(``--evals``, default 10 20 30 50): at each count DPM-Solver++(2M), ancestral DDPM on the time and
the log-SNR grid, SDE-DPM-Solver++(2M), and EDM's Heun sampler without churn, with EDM's CIFAR-10
churn (the ``sampler=edm_heun`` default) and with its ImageNet-64 churn; then ancestral DDPM with
100 evaluations as the reference:

    python scripts/sampler_choice.py --ckpt outputs/qb20_tiny28/ours --samples 500 --preset low-evals \\
        --out outputs/sampler_choice_low_evals.json

``--dry-run`` loads the checkpoint, builds every setting and prints its evaluations, without
sampling or scoring (no data needed). ``--num-reference N`` scores against N training images
instead of the whole split (a quick check, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from ddpm.commands import register_schemas
from ddpm.evaluate.sample_quality import SampleScorer
from ddpm.generate import generate
from ddpm.pretrained import load_pretrained
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.tables import markdown_table

COLUMNS = ("evals", "fid", "kid", "class_entropy", "confidence", "confident_fraction", "blob_fraction", "seconds")
PRESETS = ("low-evals",)
EDM_IMAGENET_CHURN = "sampler.s_churn=80 sampler.s_min=0.05 sampler.s_max=50 sampler.s_noise=1.003"  # EDM, Table 5


def preset_specs(name: str, evals: list[int]) -> list[str]:
    """The ``label=overrides`` settings of a preset (see the module docstring)."""
    if name != "low-evals":
        raise ValueError(f"unknown preset {name!r}")
    specs = []
    for e in evals:
        specs += [
            f"DPM-Solver++(2M) {e}=sampler=dpm_solver sampler.steps={e}",
            f"DDPM {e} small var=sampler=ddpm sampler.steps={e}",
            f"DDPM {e} small var, λ grid=sampler=ddpm sampler.steps={e} sampler.grid=logsnr",
            f"SDE-DPM-Solver++(2M) {e}=sampler=sde_dpm_solver sampler.steps={e}",
            f"EDM Heun {e}, no churn=sampler=edm_heun sampler.steps={e} sampler.s_churn=0",
            f"EDM Heun {e}, CIFAR-10 churn=sampler=edm_heun sampler.steps={e}",
            f"EDM Heun {e}, ImageNet churn=sampler=edm_heun sampler.steps={e} {EDM_IMAGENET_CHURN}",
        ]
    return [*specs, "DDPM 100 small var=sampler=ddpm sampler.steps=100"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file or training run dir")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data root (default: the one stored in the checkpoint)")
    p.add_argument("--cache-dir", default="~/.cache/ddpm")
    p.add_argument("--sampler", action="append", default=[], help="'label=override ...'")
    p.add_argument("--preset", choices=PRESETS, help="add a preset's settings (see above)")
    p.add_argument("--evals", type=int, nargs="+", default=[10, 20, 30, 50], help="evaluation counts of --preset")
    p.add_argument("--dry-run", action="store_true", help="build the settings and print their evaluations only")
    p.add_argument("--num-reference", type=int, default=None, help="training images of the reference (default: the split)")
    p.add_argument("--out", type=Path, default=Path("outputs/sampler_choice.json"))
    args = p.parse_args()
    specs = [*args.sampler, *(preset_specs(args.preset, args.evals) if args.preset else [])]
    if not specs:
        p.error("give --sampler and/or --preset")

    torch.set_grad_enabled(False)
    register_schemas()
    ckpt = Path(args.ckpt)
    ckpt = ckpt / "checkpoints" / "last.pt" if ckpt.is_dir() else ckpt
    pre = load_pretrained(ckpt, torch.device("cpu"), use_ema=True)
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        settings = []  # every setting is built before any sampling: a bad one fails at once
        for spec in specs:
            label, _, rest = spec.partition("=")
            sample_cfg = compose("sample", overrides=[f"ckpt={ckpt}", *shlex.split(rest)])
            settings.append((label.strip(), rest, build_sampler(sample_cfg.sampler, pre.diffusion)))
    if args.dry_run:
        print(markdown_table(["sampler", "overrides", "evals"], [[label, rest, s.num_evaluations] for label, rest, s in settings]))
        return
    scorer = SampleScorer(pre.cfg.dataset, args.data_dir or pre.cfg.paths.data_dir, args.cache_dir, num_reference=args.num_reference)
    eps_fn = make_eps_fn(pre.model, pre.diffusion)
    rows = []
    for label, rest, sampler in settings:
        t0 = time.perf_counter()
        x = generate(eps_fn, sampler, pre.shape, args.samples, args.seed, args.batch_size, torch.device("cpu"))
        seconds = time.perf_counter() - t0
        rows.append({"label": label, "overrides": rest, "evals": sampler.num_evaluations, "seconds": seconds, **scorer.score(x)})
        print(f"{label}: FID {rows[-1]['fid']:.2f}", flush=True)
    print(f"\n{args.samples} samples of {ckpt}\n")
    print(markdown_table(["sampler", *COLUMNS], [[r["label"], *(r[c] for c in COLUMNS)] for r in rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": shlex.join(sys.argv),
        "ckpt": str(ckpt),
        "samples": args.samples,
        "num_reference": args.num_reference,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
