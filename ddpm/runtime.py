"""Where and how the network runs: device, distributed setup, precision, TF32, channels_last."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Runtime:
    """The resolved execution setup of one process.

    Args:
        device: the torch device of this process.
        precision: effective precision (``fp32``, ``fp16`` or ``bf16``) after CPU fall-backs.
        rank: global rank (0 when not distributed).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
    """

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the network call only (no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when available (the local rank's GPU), else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was requested but CUDA is not available here; use runtime.device=cpu or auto")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device} does not exist ({torch.cuda.device_count()} GPUs visible)")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in DTYPES:
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, fp16 or bf16")
    if precision == "fp16" and device.type != "cuda":
        warnings.warn("fp16 mixed precision needs CUDA; falling back to fp32 on CPU", stacklevel=2)
        log.warning("fp16 mixed precision needs CUDA; falling back to fp32 on %s", device)
        return "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"bf16 is not supported on {torch.cuda.get_device_name(device)}; use runtime=fp16")
    return precision


# Narrowest network for which channels_last pays on CPU. Measured per thread (batch 64, oneDNN):
# 16 channels (tiny) -3% train / -7% sample; 32 (mini) +8% / +14%; 64 (small) +18% / +13%.
CPU_CHANNELS_LAST_MIN_WIDTH = 32


def resolve_memory_format(channels_last: bool | None, device: torch.device, width: int) -> torch.memory_format:
    """The memory format of the network's weights and activations.

    Args:
        channels_last: ``True``/``False`` to force; ``None`` picks by device: on CPU for networks at
            least ``CPU_CHANNELS_LAST_MIN_WIDTH`` channels wide (measured faster there), off on CUDA
            in fp32 (the fp16/bf16 presets turn it on explicitly).
        device: where the network runs.
        width: the network's base channel count (``model.channels``).
    """
    if channels_last is None:
        channels_last = device.type == "cpu" and width >= CPU_CHANNELS_LAST_MIN_WIDTH
    return torch.channels_last if channels_last else torch.contiguous_format


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Make glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default every buffer above glibc's mmap threshold (at most 32 MiB) gets its own mmap and is
    unmapped when freed, so each training step faults its activations in again: a CPU run spent
    11% of its time in the kernel (139 million minor page faults in 25 minutes). Serving those
    sizes from the heap and never trimming it removes that. Returns False where there is no glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def hydra_job() -> tuple[int | None, str]:
    """(job number, launcher target) of the running Hydra job; (None, "") outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None, ""
    target = str(hc.launcher.get("_target_", "")) if "launcher" in hc else ""
    return (hc.job.num if hc.mode.name == "MULTIRUN" else None), target


def configure_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads`` if given, else 1 per job under the joblib launcher
    (parallel jobs on one machine must not oversubscribe the cores), else torch's default."""
    if threads is None:
        threads = 1 if "joblib" in hydra_job()[1].lower() else 0
    if threads < 0:
        raise ConfigError(f"thread count must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup_runtime(runtime_cfg) -> Runtime:
    """Initialise torch.distributed when launched by torchrun, pick the device and set TF32.

    In a multirun on a machine with several GPUs, ``device=auto`` gives job j the GPU j mod count.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    configure_threads(runtime_cfg.get("num_threads"))
    job_num = hydra_job()[0]
    if world_size == 1 and job_num is not None and runtime_cfg.device == "auto" and torch.cuda.device_count() > 1:
        local_rank = job_num % torch.cuda.device_count()
    device = resolve_device(runtime_cfg.device, local_rank)
    if device.type == "cpu":
        keep_freed_memory()
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    if device.type == "cuda":
        # Set explicitly both ways: the defaults changed across torch releases.
        torch.backends.cuda.matmul.allow_tf32 = bool(runtime_cfg.tf32)
        torch.backends.cudnn.allow_tf32 = bool(runtime_cfg.tf32)
        torch.backends.cudnn.benchmark = True
    return Runtime(device, resolve_precision(runtime_cfg.precision, device), rank, world_size, local_rank)


def teardown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
