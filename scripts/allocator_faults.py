"""Minor page faults and kernel time per training step, with glibc's default allocator settings
and with :func:`ddpm.runtime.keep_freed_memory` (what every ddpm command sets on CPU).

    python scripts/allocator_faults.py default && python scripts/allocator_faults.py keep

Run each setting in its own process: mallopt settings cannot be undone.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from omegaconf import OmegaConf

from ddpm.config import ModelConfig
from ddpm.models import build_model
from ddpm.runtime import keep_freed_memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", choices=("default", "keep"))
    p.add_argument("--model", default="mini", help="model preset (conf/model/<name>.yaml)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.setting == "keep" and not keep_freed_memory():
        raise SystemExit("error: no glibc here: nothing to tune")
    from importlib.resources import files

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(str(files("ddpm.conf") / "model" / f"{args.model}.yaml")))
    model = build_model(cfg, 32, 1).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(args.batch_size, 1, 32, 32).to(memory_format=torch.channels_last)
    k = torch.randint(0, 1000, (args.batch_size,))

    def step() -> None:
        model(x, k).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):  # warm-up: first-touch faults of weights and optimizer state
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    n = args.steps
    print(
        f"{args.setting}: {(r1.ru_minflt - r0.ru_minflt) / n:,.0f} minor faults/step, "
        f"kernel {(r1.ru_stime - r0.ru_stime) / n * 1e3:.1f} ms/step, user {(r1.ru_utime - r0.ru_utime) / n * 1e3:.0f} ms/step, "
        f"wall {wall / n * 1e3:.0f} ms/step ({args.model}, batch {args.batch_size}, {args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
