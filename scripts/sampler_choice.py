"""Choose sampler defaults by measured quality: score one checkpoint's samples under several
sampler settings with the domain classifier (:class:`ddpm.evaluate.sample_quality.SampleScorer`).

    python scripts/sampler_choice.py --ckpt outputs/mnist --samples 1000 \\
        --sampler "dpm k-grid=sampler=dpm_solver sampler.grid=time" \\
        --sampler "dpm λ-grid=sampler=dpm_solver sampler.grid=logsnr"

A ``--sampler`` is ``label=override ...`` on the ``sample`` config (what ``ddpm-sample`` takes).
Every setting draws the same seeds. Prints a markdown table and writes JSON (``--out``).
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

from ddpm.evaluate.sample_quality import SampleScorer
from ddpm.generate import generate
from ddpm.pretrained import load_pretrained
from ddpm.sample.config import register as register_sample_config
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.tables import markdown_table

COLUMNS = ("evals", "fid", "kid", "class_entropy", "confidence", "confident_fraction", "blob_fraction", "seconds")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file or training run dir")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data root (default: the one stored in the checkpoint)")
    p.add_argument("--cache-dir", default="~/.cache/ddpm")
    p.add_argument("--sampler", action="append", required=True, help="'label=override ...'")
    p.add_argument("--out", type=Path, default=Path("outputs/sampler_choice.json"))
    args = p.parse_args()

    torch.set_grad_enabled(False)
    register_sample_config()
    ckpt = Path(args.ckpt)
    ckpt = ckpt / "checkpoints" / "last.pt" if ckpt.is_dir() else ckpt
    pre = load_pretrained(ckpt, torch.device("cpu"), use_ema=True)
    scorer = SampleScorer(pre.cfg.dataset, args.data_dir or pre.cfg.paths.data_dir, args.cache_dir)
    eps_fn = make_eps_fn(pre.model, pre.diffusion)
    rows = []
    with initialize_config_module("ddpm.conf", version_base="1.3"):
        for spec in args.sampler:
            label, _, rest = spec.partition("=")
            sample_cfg = compose("sample", overrides=[f"ckpt={ckpt}", *shlex.split(rest)])
            sampler = build_sampler(sample_cfg.sampler, pre.diffusion)
            t0 = time.perf_counter()
            x = generate(eps_fn, sampler, pre.shape, args.samples, args.seed, args.batch_size, torch.device("cpu"))
            seconds = time.perf_counter() - t0
            rows.append(
                {"label": label.strip(), "overrides": rest, "evals": sampler.num_evaluations, "seconds": seconds, **scorer.score(x)}
            )
            print(f"{label}: FID {rows[-1]['fid']:.2f}", flush=True)
    print(f"\n{args.samples} samples of {ckpt}\n")
    print(markdown_table(["sampler", *COLUMNS], [[r["label"], *(r[c] for c in COLUMNS)] for r in rows]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": shlex.join(sys.argv), "ckpt": str(ckpt), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
