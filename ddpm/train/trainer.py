"""The training loop of ``ddpm-train``: :class:`Trainer`, and :class:`TrainCallback`, the hooks through which
``train.eval_every`` and ``train.regimes_every`` reach it (assembled in :mod:`ddpm.train.callbacks`; the run
itself, :func:`ddpm.train.run.train`, wires the two together).

Single process by default; ``torchrun --nproc_per_node=N -m ddpm.train ...`` runs the same code
with DistributedDataParallel. Every rank draws the random numbers of the whole global batch from
one shared generator and takes its own rows, so N ranks with batch B compute exactly what one
process with batch N*B computes, and a resumed run continues the same random stream.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

import ddpm
from ddpm.checkpoint import find_latest, load_checkpoint, save_checkpoint
from ddpm.conditioning import drop_labels, resolve_num_classes, round_robin_labels
from ddpm.data import to_model_range
from ddpm.data.streaming import epoch_permutation, open_stream
from ddpm.data.subset import describe_record, load_training_set
from ddpm.diffusion import GaussianDiffusion
from ddpm.ema import make_ema
from ddpm.errors import CheckpointError, ConfigError
from ddpm.generate import generate
from ddpm.models import build_model
from ddpm.paths import resolve_data_root
from ddpm.runtime import Runtime, resolve_memory_format, setup_runtime
from ddpm.samplers import build_sampler, make_eps_fn
from ddpm.train.config import validate_train

log = logging.getLogger("ddpm.train")

# Parts of the config a checkpoint's weights depend on: resuming with other values is refused.
COMPATIBLE_KEYS = ("model", "schedule", "train.objective", "dataset.image_size", "dataset.channels", "dataset.n")


# Testing hook (used by scripts/fault_drill.py and tests): steps whose loss is made NaN, e.g.
# "5,6,7", "3-5" or "12-" (12 onwards). Unset in normal use.
NONFINITE_ENV = "DDPM_TEST_NONFINITE_STEPS"


def parse_step_ranges(spec: str) -> list[tuple[int, float]]:
    """``"5,8-9,12-"`` -> inclusive ranges ``[(5, 5), (8, 9), (12, inf)]``.

    Args:
        spec: comma-separated steps ``N``, ranges ``A-B`` and open ranges ``A-``.
    """
    ranges: list[tuple[int, float]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            ranges.append((int(lo), float(int(hi)) if hi else math.inf) if sep else (int(lo), float(int(lo))))
        except ValueError:
            raise ConfigError(f"{NONFINITE_ENV}={spec!r}: expected steps like 5,8-9,12-") from None
    return ranges


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps."""


def _select(cfg: Any, key: str) -> Any:
    node = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else _dict_select(cfg, key)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _dict_select(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def config_differences(saved: dict, cfg: DictConfig) -> list[str]:
    """Human-readable differences between a checkpoint's config and ``cfg`` on the weight-shaping keys."""
    diffs = []
    for key in COMPATIBLE_KEYS:
        a, b = _select(saved, key), _select(cfg, key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if sub != "name" and a.get(sub) != b.get(sub):
                    diffs.append(f"{key}.{sub}: checkpoint {a.get(sub)!r} vs now {b.get(sub)!r}")
        elif a != b:
            diffs.append(f"{key}: checkpoint {a!r} vs now {b!r}")
    return diffs


def _subset_key(record: dict | None) -> str | None:
    """What identifies a training subset: the hash of its indices (None: all images)."""
    return None if record is None else str(record["sha256"])


def lr_factor(step: int, warmup: int, kind: str, progress: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then constant or cosine decay to 0.

    Args:
        step: optimizer steps taken.
        warmup: warm-up steps.
        kind: ``constant`` or ``cosine``.
        progress: share of the run done after warm-up, in [0, 1]: of ``max_steps`` or, with a
            time budget, of the budget (whichever is further), so the decay ends with the run.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


class BudgetClock:
    """Seconds of training spent, on the wall clock or as process CPU time per torch thread
    (fair when other jobs share the machine); only the time inside training steps counts.

    Args:
        kind: ``wall`` or ``process``.
        spent: seconds already spent (a resumed run continues its budget).
    """

    def __init__(self, kind: str, spent: float = 0.0) -> None:
        if kind not in ("wall", "process"):
            raise ConfigError(f"train.budget_clock must be wall or process, got {kind!r}")
        self.kind, self.spent = kind, float(spent)
        self._start: float | None = None

    def now(self) -> float:
        return time.perf_counter() if self.kind == "wall" else time.process_time() / max(1, torch.get_num_threads())

    def __enter__(self) -> BudgetClock:
        self._start = self.now()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.spent += self.now() - self._start


def agree_between_steps(signum: int | None, spent: float, reduce_max: Callable[[torch.Tensor], None] | None) -> tuple[int | None, float]:
    """What every rank acts on after a step: a stop signal any rank received, and the budget clock
    of the slowest rank. The LR schedule and the budget read that one clock, so all ranks take the
    same LR (each rank's own clock differs) and the checkpoint stores the value every rank used.

    Args:
        signum: the signal this rank received, or None.
        spent: this rank's budget seconds.
        reduce_max: all-reduces a float64 tensor in place with MAX (None: a single process).
    """
    if reduce_max is None:
        return signum, spent
    flag = torch.tensor([float(signum or 0), spent], dtype=torch.float64)
    reduce_max(flag)
    return int(flag[0].item()) or None, float(flag[1].item())


def peak_memory_mib(device: torch.device) -> str:
    """``max_rss_mib N`` (peak resident memory of this process) and, on CUDA, ``cuda_max_alloc_mib N``."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)  # bytes / KiB
    out = f"max_rss_mib {rss:.0f}"
    if device.type == "cuda":
        out += f" cuda_max_alloc_mib {torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
    return out


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag checked between steps (finish step, checkpoint, exit).

    Under submitit (SLURM), SIGUSR2 announces the time limit and submitit's own handler requeues
    the job: it is deferred until the checkpoint is written (see :meth:`chain`).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                if s == signal.SIGUSR2 and not callable(signal.getsignal(s)):
                    continue  # nobody to hand SIGUSR2 on to: leave its default
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def chain(self) -> None:
        """Call the handler the received signal had before us (submitit's requeue), if any."""
        old = self._old.get(self.signum) if self.signum is not None else None
        if callable(old) and self.signum == signal.SIGUSR2:
            old(self.signum, None)

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DDP) else model


class TrainCallback:
    """A hook of :meth:`Trainer.fit`: the work the loop does beside training (``train.eval_every``,
    ``train.regimes_every``; see :mod:`ddpm.train.callbacks`). Every method is a no-op here; a callback
    overrides those it needs.
    """

    def on_step(self, trainer: Trainer, writer: Any) -> None:
        """After step ``trainer.step``, its checkpoint and its sample grid (every rank calls it).

        Args:
            trainer: the running trainer.
            writer: its ``SummaryWriter`` (None off the main rank).
        """

    def on_end(self, trainer: Trainer, writer: Any) -> None:
        """After the loop's final checkpoint and grid (not when a signal stopped the run).

        Args:
            trainer: the trainer, at its last step.
            writer: its ``SummaryWriter`` (None off the main rank).
        """

    def writes_checkpoint(self, step: int) -> bool:
        """Whether :meth:`on_step` writes a checkpoint at ``step``: the loop then writes no final one there.

        Args:
            step: a training step.
        """
        return False


@dataclass
class _Window:
    """The losses summed since the last logged step, and the time of the current epoch."""

    loss: torch.Tensor
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    last: float = float("nan")
    first: float | None = None
    epoch_started: float = field(default_factory=time.perf_counter)
    epoch_first: int = 0  # the epoch's first step run here


class Trainer:
    """Everything of one training run; :meth:`fit` runs it.

    Args:
        cfg: the composed ``train`` config.
        run_dir: where checkpoints, samples, TensorBoard logs and the config go.
        callbacks: run after every step and at the end (:func:`ddpm.train.callbacks.build_callbacks`
            makes those of ``train.eval_every`` and ``train.regimes_every``).
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, callbacks: Sequence[TrainCallback] = ()) -> None:
        validate_train(cfg)
        resolve_data_root(cfg)  # null: DEFAULT_DATA_DIR; the checkpoints store the root read
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rt: Runtime = setup_runtime(cfg.runtime)
        tc = cfg.train
        self.accum = int(cfg.train.grad_accum_steps)
        # dataset.in_memory: a training set too large for memory streams through loader workers (None: in memory)
        self.stream = open_stream(
            cfg.dataset,
            cfg.paths.data_dir,
            seed=tc.seed,
            batch_size=tc.batch_size,
            accum=self.accum,
            rank=self.rt.rank,
            world_size=self.rt.world_size,
            device=self.rt.device,
            cache_dir=cfg.paths.cache_dir,
        )
        if self.stream is not None and cfg.dataset.get("subset_part") is not None:  # the streamed index draws no parts
            raise ConfigError("dataset.subset_part needs the training images in memory; set dataset.in_memory=true")
        if self.stream is not None and tc.get("regimes_every", 0):
            raise ConfigError(
                "train.regimes_every needs the training images in memory; set dataset.in_memory=true or train.regimes_every=0"
            )
        if self.stream is None:
            data = load_training_set(cfg.dataset, cfg.paths.data_dir, cfg.paths.cache_dir)  # dataset.n: a seeded subset
            self.images = data.images.to(self.rt.device)  # uint8 in memory; scaled per batch on device
        else:
            data, self.images = self.stream, None
        self.num_images = len(data)
        self.data_source = data.source
        self.data_subset = data.subset  # recorded in every checkpoint (None: all images)
        # model.num_classes=auto becomes the dataset's class count here, so that checkpoints store the number.
        self.num_classes = resolve_num_classes(cfg.model.get("num_classes"), cfg.dataset, data.labels)
        cfg.model.num_classes = self.num_classes
        self.labels = data.labels.to(self.rt.device) if self.num_classes else None
        self.shape = tuple(data.shape) if self.stream is not None else tuple(self.images.shape[1:])
        self.global_batch = tc.batch_size * self.accum * self.rt.world_size
        self.steps_per_epoch = self.num_images // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"global batch {self.global_batch} (train.batch_size x ranks x train.grad_accum_steps) exceeds the {self.num_images} training images"
            )

        self.diffusion = GaussianDiffusion.from_config(cfg.schedule, tc)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model, self.shape[1], self.shape[0]).to(self.rt.device)
        self.memory_format = resolve_memory_format(cfg.runtime.channels_last, self.rt.device, int(cfg.model.channels))
        self.model = self.model.to(memory_format=self.memory_format)
        self.ema = make_ema(self.model, tc.ema_decay)
        fused = self.rt.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay, fused=fused
        )
        self.clock = BudgetClock(tc.budget_clock)
        # the budget seconds all ranks agreed on at the last step (agree_between_steps): the LR reads these
        self.shared_spent = 0.0
        self.budget_s = math.inf if tc.time_budget_min is None else 60.0 * tc.time_budget_min
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, tc.warmup_steps, tc.lr_schedule, self.progress(step))
        )
        self.best_fid = math.inf  # kept in the checkpoints: the evaluation callback keeps best.pt at it
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.precision == "fp16")
        net: torch.nn.Module = self.model
        if self.rt.distributed:
            net = DDP(net, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None)
        self.net = torch.compile(net) if cfg.runtime.compile else net
        self.noise_gen = torch.Generator(self.rt.device).manual_seed(tc.seed)  # same on all ranks
        self.step = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self._perm_epoch, self._perm = -1, torch.empty(0)
        self._nan_steps = parse_step_ranges(os.environ.get(NONFINITE_ENV, ""))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        rng = {"noise": self.noise_gen.get_state(), "torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        return {
            "step": self.step,
            "model": _unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": self.ema.n_averaged.detach().cpu(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "skipped_steps": self.skipped_steps,
            "budget_spent_s": self.clock.spent,
            "best_fid": self.best_fid,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "version": ddpm.__version__,
            "data_source": self.data_source,
            "data_subset": self.data_subset,
            "data_position": None if self.stream is None else self.stream.state_dict(),  # a stream's next batch
        }

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        diffs = config_differences(state.get("config", {}), self.cfg)
        if diffs:
            raise CheckpointError(f"checkpoint {path} was trained with another config: " + "; ".join(diffs))
        saved_subset = _subset_key(state.get("data_subset"))
        if saved_subset != _subset_key(self.data_subset):
            raise CheckpointError(
                f"checkpoint {path} was trained on another subset of the images ({describe_record(state.get('data_subset'))}), "
                f"now {describe_record(self.data_subset)}: resume with the run's dataset.n, dataset.subset_seed and dataset.subset_part"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.ema.module.load_state_dict(state["ema"])
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model: {str(exc).splitlines()[0]}") from exc
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.clock.spent = self.shared_spent = float(state.get("budget_spent_s", 0.0))
        self.best_fid = float(state.get("best_fid", math.inf))
        if self.stream is not None:  # the loader continues at the checkpoint's batch
            self.stream.load_state_dict(state.get("data_position"), self.step, path)
        self.noise_gen.set_state(state["rng"]["noise"].cpu() if self.rt.device.type == "cpu" else state["rng"]["noise"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.rt.device)

    def resume(self, resume: str | None) -> Path | None:
        """Load ``latest`` (newest good checkpoint of the run dir) or an explicit path."""
        if not resume:
            return None
        if resume == "latest":
            found = find_latest(self.ckpt_dir)
            if found is None:
                log.info("resume=latest: no checkpoint in %s yet, starting from step 0", self.ckpt_dir)
                return None
            path, state = found
        else:
            path = Path(resume).expanduser()
            state = load_checkpoint(path)
        self.load_state_dict(state, path)
        log.info("resumed from %s at step %d", path, self.step)
        return path

    # ------------------------------------------------------------------ data
    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            self._perm = epoch_permutation(self.cfg.train.seed, epoch, len(self.images)).to(self.rt.device)
            self._perm_epoch = epoch
        return self._perm

    def global_batch_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x_0, k, ε and the labels (None: unconditional) for the whole global batch of the current step (identical on all ranks);
        a streamed x_0 holds this rank's rows only, in the same order (its micro-batches one after the other)."""
        if self.stream is not None:  # the same images as in memory, flipped by the loader's workers
            x0 = to_model_range(self.stream.next())
        else:
            epoch, pos = divmod(self.step, self.steps_per_epoch)
            idx = self._epoch_perm(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch]
            x0 = to_model_range(self.images[idx])
        G, dev, g = self.global_batch, self.rt.device, self.noise_gen
        k = self.diffusion.sample_timesteps(G, g, dev)
        noise = torch.randn((G, *self.shape), generator=g, device=dev)
        flip = torch.rand(G, generator=g, device=dev) < 0.5  # drawn when streaming too: the noise stream stays the same
        if self.cfg.dataset.hflip and self.stream is None:
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        y = None
        if self.labels is not None:  # drawn after the others: an unconditional run keeps its random stream
            y = drop_labels(self.labels[idx], self.cfg.train.cond_drop_prob, self.num_classes, g)
        return x0, k, noise, y

    # ------------------------------------------------------------------ one optimizer step
    def _net_call(self, xk: torch.Tensor, k: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The training network on x_k (labels ``y`` if conditional) in its memory format, under autocast (the loss stays float32)."""
        with self.rt.autocast():
            xk = xk.to(memory_format=self.memory_format)
            return self.net(xk, k) if y is None else self.net(xk, k, y)

    def progress(self, step: int) -> float:
        """Share of the run done after warm-up at ``step``: of max_steps, or of the time budget if further along."""
        tc = self.cfg.train
        by_steps = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
        return max(by_steps, self.shared_spent / self.budget_s)

    def budget_spent(self) -> bool:
        return self.clock.spent >= self.budget_s

    def _reduce_max(self, t: torch.Tensor) -> None:
        """All-reduce (MAX) a CPU tensor in place across the ranks, on the backend's device."""
        on = t.to(self.rt.device)
        dist.all_reduce(on, op=dist.ReduceOp.MAX)
        t.copy_(on.cpu())

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over all micro-batches, then one optimizer step. Returns (loss, grad norm)."""
        x0, k, noise, y = self.global_batch_tensors()
        B, W, r = self.cfg.train.batch_size, self.rt.world_size, self.rt.rank
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.rt.device)
        for m in range(self.accum):
            rows = slice(m * B * W + r * B, m * B * W + (r + 1) * B)
            last = m == self.accum - 1
            sync = nullcontext() if last or not self.rt.distributed else self.net.no_sync()
            with sync:
                net = self._net_call if y is None else functools.partial(self._net_call, y=y[rows])
                x = x0[m * B : (m + 1) * B] if self.stream is not None else x0[rows]  # a stream holds this rank's rows only
                loss = self.diffusion.loss(net, x, k[rows], noise[rows]) / self.accum
                if self._nan_steps and any(lo <= self.step <= hi for lo, hi in self._nan_steps):
                    loss = loss * float("nan")  # injected fault: NaN loss and gradients
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
        finite = bool(torch.isfinite(grad_norm) & torch.isfinite(total))
        if self.rt.distributed:  # all ranks must agree to skip
            flag = torch.tensor([float(finite)], device=self.rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if finite:
            self.scaler.step(self.optimizer)
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            self.skipped_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", self.step, self.bad_steps)
        self.scaler.update()
        self.scheduler.step()
        if finite:
            self.ema.update_parameters(self.model)
        self.step += 1
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (step {self.step}); "
                f"stopped, the last good checkpoint is kept in {self.ckpt_dir}. Lower train.lr or use runtime=bf16/fp32."
            )
        return total, grad_norm

    # ------------------------------------------------------------------ outputs
    def save(self) -> Path | None:
        if not self.rt.is_main:
            return None
        path = save_checkpoint(self.state_dict(), self.ckpt_dir, self.step, self.cfg.train.keep_checkpoints)
        log.info("checkpoint %s", path)
        return path

    def sample_grid(self, writer) -> Path | None:
        tc = self.cfg.train
        if not self.rt.is_main or tc.num_sample_images == 0:
            return None
        from torchvision.utils import save_image

        grid = (self.ema_samples(tc.num_sample_images) + 1) / 2
        path = self.run_dir / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # conditional: sample i is of class i % C, so each column of a C-wide grid is one class
        nrow = self.num_classes or int(math.ceil(math.sqrt(len(grid))))
        save_image(grid, path, nrow=nrow)
        if writer is not None:
            from torchvision.utils import make_grid

            writer.add_image("samples", make_grid(grid, nrow=nrow), self.step)
        return path

    def ema_samples(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` samples of the EMA network with the run's sampler (``sampler`` group), model range;
        a conditional network draws sample i for class i % num_classes (no guidance)."""
        model = self.ema.module.eval()
        labels = round_robin_labels(n, self.num_classes) if self.num_classes else None
        try:
            return generate(
                make_eps_fn(model, self.diffusion, self.rt.autocast),
                build_sampler(self.cfg.sampler, self.diffusion),
                self.shape,
                n,
                seed=seed,
                batch_size=max(self.cfg.train.batch_size, 64),
                device=self.rt.device,
                labels=labels,
            )
        finally:
            model.train()

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        rt = self.rt
        return (
            f"dataset {self.cfg.dataset.name}: {self.num_images} images {self.shape} from {self.data_source}"
            + (f", {self.stream.describe()}" if self.stream is not None else "")
            + "\n"
            f"model {self.cfg.model.name}: {n_params:,} parameters"
            + (f", conditional on {self.num_classes} classes (cond_drop_prob {self.cfg.train.cond_drop_prob})" if self.num_classes else "")
            + "\n"
            f"schedule {self.cfg.schedule.name}: T={self.diffusion.T}, t_T={float(self.diffusion.schedule.ou_times[-1]):.4f}\n"
            f"device {rt.device}, precision {rt.precision}, "
            f"{'channels_last' if self.memory_format == torch.channels_last else 'contiguous'} memory format, world size {rt.world_size}, "
            f"global batch {self.global_batch} = {self.cfg.train.batch_size} per rank x {rt.world_size} ranks x {self.accum} accumulation"
        )

    # ------------------------------------------------------------------ the loop
    def _log_step(self, w: _Window, grad_norm: torch.Tensor, bar: Any, writer: Any) -> None:
        """The mean loss of the window (of the whole global batch), grad norm, LR and images/s; the window restarts."""
        rt = self.rt
        elapsed = time.perf_counter() - w.started
        if rt.distributed:  # log the loss of the whole global batch, not rank 0's share
            dist.all_reduce(w.loss)
            w.loss /= rt.world_size
        w.last = float(w.loss) / w.steps
        w.first = w.last if w.first is None else w.first
        ips = w.steps * self.global_batch / max(elapsed, 1e-9)
        lr = self.scheduler.get_last_lr()[0]
        bar.set_postfix(loss=f"{w.last:.4f}", img_s=f"{ips:.0f}")
        if rt.is_main:
            log.info(
                "step %d loss %.5f grad_norm %.3f lr %.2e img/s %.1f %s",
                self.step,
                w.last,
                float(grad_norm),
                lr,
                ips,
                peak_memory_mib(rt.device),
            )
            writer.add_scalar("train/loss", w.last, self.step)
            writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
            writer.add_scalar("train/lr", lr, self.step)
            writer.add_scalar("train/images_per_s", ips, self.step)
            if rt.device.type == "cuda":
                writer.add_scalar("train/max_memory_gb", torch.cuda.max_memory_allocated(rt.device) / 2**30, self.step)
        w.loss.zero_()
        w.steps, w.started = 0, time.perf_counter()

    def _log_epoch(self, w: _Window, writer: Any) -> None:
        """The wall time of the epoch just done (the mean of the epochs since the last line, when shorter than log_every)."""
        seconds = time.perf_counter() - w.epoch_started
        epochs = max(1, (self.step - w.epoch_first) // self.steps_per_epoch)
        if self.rt.is_main:
            log.info(
                "epoch %d done at step %d: %.2f s wall for its %d steps run here%s",
                self.step // self.steps_per_epoch,
                self.step,
                seconds / epochs,
                self.step - w.epoch_first if epochs == 1 else self.steps_per_epoch,
                "" if epochs == 1 else f" (mean of the last {epochs} epochs)",
            )
            writer.add_scalar("train/epoch_seconds", seconds / epochs, self.step)
        w.epoch_started, w.epoch_first = time.perf_counter(), self.step

    def _stopped(self, signum: int, stop: _StopSignal, writer: Any) -> None:
        """A signal stopped the loop: save, say how to continue, exit with 128 + the signal."""
        name = signal.Signals(signum).name
        self.save()
        msg = f"received {name}: stopped after step {self.step}, checkpoint saved in {self.ckpt_dir}; continue with resume=latest"
        log.warning(msg)
        print(msg, file=sys.stderr, flush=True)
        if writer is not None:
            writer.close()
        stop.chain()
        raise SystemExit(128 + signum)

    def fit(self) -> dict[str, Any]:
        tc, rt = self.cfg.train, self.rt
        writer = None
        if rt.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"))
        bar = tqdm(
            total=tc.max_steps if tc.time_budget_min is None else None,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not (tc.progress and rt.is_main),
            dynamic_ncols=True,
        )
        window = _Window(torch.zeros((), device=rt.device), epoch_first=self.step)  # epochs timed from the first step run here
        stop = _StopSignal()
        out_of_time = self.budget_spent()
        reduce_max = self._reduce_max if rt.distributed else None
        with stop:
            while self.step < tc.max_steps and stop.signum is None and not out_of_time:
                with self.clock:
                    loss, grad_norm = self.train_step()
                # a signal seen by any rank stops all of them at the same step; the slowest rank's clock is
                # every rank's clock, so the budget ends at the same step and the LR is the same on all
                stop.signum, self.shared_spent = agree_between_steps(stop.signum, self.clock.spent, reduce_max)
                self.clock.spent = self.shared_spent
                out_of_time = self.budget_spent()
                window.loss += loss
                window.steps += 1
                if tc.log_every and (self.step % tc.log_every == 0 or self.step == tc.max_steps or out_of_time):
                    self._log_step(window, grad_norm, bar, writer)
                # epochs shorter than log_every steps (small subsets) are summed into one line per log_every steps
                if self.step % self.steps_per_epoch == 0 and (
                    not tc.log_every or self.steps_per_epoch >= tc.log_every or self.step % tc.log_every == 0
                ):
                    self._log_epoch(window, writer)
                if tc.ckpt_every and self.step % tc.ckpt_every == 0:
                    self.save()
                if tc.sample_every and self.step % tc.sample_every == 0:
                    self.sample_grid(writer)
                for callback in self.callbacks:
                    callback.on_step(self, writer)
                bar.update(1)
        bar.close()
        if stop.signum is not None:
            self._stopped(stop.signum, stop, writer)
        # Final checkpoint and grid, unless the loop (or a callback) just wrote them.
        if not (tc.ckpt_every and self.step % tc.ckpt_every == 0) and not any(c.writes_checkpoint(self.step) for c in self.callbacks):
            self.save()
        if not (tc.sample_every and self.step % tc.sample_every == 0):
            self.sample_grid(writer)
        for callback in self.callbacks:
            callback.on_end(self, writer)
        if out_of_time:
            log.info("time budget of %.2f min spent (%s clock) after step %d", tc.time_budget_min, tc.budget_clock, self.step)
        if writer is not None:
            writer.close()
        if dist.is_initialized():
            # Every rank waits for the main rank's last checkpoint, grid and evaluation: a rank that
            # tore down its process group while the main rank still worked aborted at exit.
            dist.barrier()
        summary = {
            "step": self.step,
            "loss": window.last,
            "first_logged_loss": window.first,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.clock.spent,
            "budget_clock": tc.budget_clock,
            "best_fid": None if math.isinf(self.best_fid) else self.best_fid,
            "checkpoint": str(self.ckpt_dir / "last.pt"),
        }
        if rt.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        return summary
