"""The bad-input cases: command lines, data files and checkpoints that must each give exit code 2
and one ``error:`` line. ``tests/test_bad_input.py`` runs every case in-process;
``scripts/fault_drill.py`` runs them as real processes. Also the tiny MNIST run both train
(:func:`tiny_train_overrides`, which ``tests/conftest.py`` hands to the tests).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tiny_train_overrides(data_dir: Path, cache_dir: Path, **extra: object) -> list[str]:
    """Overrides for a tiny, fast MNIST run (a few seconds per dozen steps on 2 cores).

    Args:
        data_dir: the data root holding ``MNIST/raw``.
        cache_dir: ``paths.cache_dir``.
        extra: more overrides (key -> value), applied last.
    """
    base = {
        "model": "tiny",
        "paths.data_dir": str(data_dir),
        "paths.cache_dir": str(cache_dir),
        "train.batch_size": 16,
        "train.max_steps": 20,
        "train.lr": 1e-3,
        "train.warmup_steps": 0,
        "train.log_every": 5,
        "train.sample_every": 0,
        "train.ckpt_every": 10,
        "train.num_sample_images": 4,
        "sampler.steps": 5,
        "train.ema_decay": 0.9,
        "train.progress": False,
        "schedule.T": 100,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# A tiny MNIST run on top of the tests' (:func:`tiny_train_overrides`): batch 4, a log line every 2 steps, no sample grid.
DRILL_TINY: dict[str, object] = {"train.batch_size": 4, "train.log_every": 2, "train.num_sample_images": 0}

# A proxy that refuses every connection: urllib honours these variables, so a download fails at once
# whether or not the machine has a network.
OFFLINE_ENV = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}


def drill_train_overrides(data_dir: Path, cache_dir: Path, **extra: object) -> list[str]:
    """The drill's tiny ``ddpm-train`` overrides (:func:`tiny_train_overrides` with :data:`DRILL_TINY`).

    Args:
        data_dir: the data root holding ``MNIST/raw``.
        cache_dir: ``paths.cache_dir``.
        extra: more overrides (key -> value), applied last.
    """
    return tiny_train_overrides(data_dir, cache_dir, **{**DRILL_TINY, **extra})


@dataclass
class BadInput:
    """One bad invocation: the command, its arguments and a piece of the expected one-line error.

    Args:
        name: short identifier.
        cmd: console script (``ddpm-train``, ...).
        args: command-line arguments; ``{work}`` and ``{ckpt}`` are filled in by :func:`bad_input_args`.
        expect: a substring the single ``error:`` line must contain (case-insensitive).
        env: environment variables the case runs with (e.g. :data:`OFFLINE_ENV`).
    """

    name: str
    cmd: str
    args: list[str]
    expect: str
    env: dict[str, str] = field(default_factory=dict)


_T = "ddpm-train"
_S = "ddpm-sample"
BAD_INPUTS: list[BadInput] = [
    BadInput("wrong type", _T, ["train.batch_size=abc"], "train.batch_size"),
    BadInput("unknown model", _T, ["model=huge"], "model/huge"),
    BadInput("unknown key", _T, ["train.objectiv=eps"], "train.objectiv"),
    BadInput("negative max_steps", _T, ["train.max_steps=-1"], "train.max_steps must be >= 0"),
    BadInput("zero lr", _T, ["train.lr=0"], "train.lr must be > 0"),
    BadInput("nan lr", _T, ["train.lr=nan"], "train.lr must be > 0"),
    BadInput("ema_decay out of range", _T, ["train.ema_decay=1.5"], "train.ema_decay"),
    BadInput("unknown objective", _T, ["train.objective=score"], "train.objective"),
    BadInput("betas of wrong length", _T, ["train.betas=[0.9]"], "train.betas"),
    BadInput("negative weight decay", _T, ["train.weight_decay=-1"], "train.weight_decay"),
    BadInput("zero max_bad_steps", _T, ["train.max_bad_steps=0"], "train.max_bad_steps"),
    BadInput("unknown precision", _T, ["runtime.precision=fp8"], "runtime.precision"),
    BadInput("unknown device", _T, ["runtime.device=tpu"], "unknown device"),
    BadInput("absent GPU", _T, ["runtime.device=cuda:7"], "cuda"),
    BadInput("zero grad_accum_steps", _T, ["train.grad_accum_steps=0"], "train.grad_accum_steps"),
    BadInput("T = 0", _T, ["schedule.T=0"], "schedule.T must be > 0"),
    BadInput("beta out of range", _T, ["schedule.beta_end=2.0"], "beta"),
    BadInput("unknown schedule", _T, ["schedule.name=foo"], "unknown schedule"),
    BadInput("huge cosine offset", _T, ["schedule=cosine", "schedule.cosine_s=1e6"], "schedule.cosine_s must lie in (0, 1000]"),
    BadInput(
        "p_mean beyond the schedule",
        _T,
        ["train.timestep_sampling=lognormal", "train.p_mean=8"],
        "train.p_mean must lie within the schedule's ln σ range",
    ),
    BadInput("channels not 1 or 3", _T, ["dataset.channels=2"], "dataset.channels"),
    BadInput("channels mismatch", _T, ["dataset.channels=3"], "channels"),
    BadInput("heads do not divide", _T, ["model.num_heads=3", "model.attention_resolutions=[16]"], "num_heads"),
    BadInput("batch exceeds dataset", _T, ["train.batch_size=100000"], "exceeds"),
    BadInput("subset part without n", _T, ["dataset.subset_part=1"], "dataset.subset_part=1 needs dataset.n"),
    BadInput("subset part not 0 or 1", _T, ["dataset.n=40", "dataset.subset_part=2"], "dataset.subset_part must be 0 or 1"),
    BadInput(
        "subset halves beyond the split",
        _T,
        ["dataset.n=40000", "dataset.subset_part=0"],
        "dataset.n=40000 with dataset.subset_part needs 2n=80000 <= 60000 training images",
    ),
    BadInput("missing data root", _T, ["paths.data_dir={work}/no_such_root"], "data root"),
    BadInput("folder without path", _T, ["dataset=folder"], "dataset.path"),
    BadInput("missing folder", _T, ["dataset=folder", "dataset.path={work}/no_such_folder"], "not found"),
    BadInput("empty folder", _T, ["dataset=folder", "dataset.path={work}/empty"], "no images"),
    BadInput(
        "images of wrong size",
        _T,
        ["dataset=folder", "dataset.path={work}/size20", "dataset.image_size=32", "dataset.resize=false"],
        "expected 32x32",
    ),
    BadInput("unreadable image", _T, ["dataset=folder", "dataset.path={work}/corrupt", "dataset.image_size=16"], "cannot read image"),
    BadInput(
        "size not divisible",
        _T,
        ["dataset=folder", "dataset.path={work}/size30", "dataset.image_size=30", "model.channel_mult=[1,2,2]"],
        "divisible",
    ),
    # data files and downloads
    BadInput(
        "offline MNIST download", _T, ["paths.data_dir={work}/empty_root", "dataset.download=true"], "could not download MNIST", OFFLINE_ENV
    ),
    BadInput("truncated MNIST file", _T, ["paths.data_dir={work}/mnist_truncated"], "train-images-idx3-ubyte.gz"),
    BadInput("MNIST file of another format", _T, ["paths.data_dir={work}/mnist_foreign"], "not an MNIST IDX file"),
    BadInput("corrupt CryptoPunks sheet", _T, ["dataset=cryptopunks", "paths.data_dir={work}/punks_corrupt"], "punks.png"),
    BadInput("truncated cats tar", _T, ["dataset=cats", "paths.data_dir={work}/cats_truncated"], "afhq_cat_64.tar is truncated"),
    BadInput("empty cats tar", _T, ["dataset=cats", "paths.data_dir={work}/cats_empty"], "afhq_cat_64.tar is empty"),
    BadInput("damaged CIFAR-10 file", _T, ["dataset=cifar10", "paths.data_dir={work}/cifar_damaged"], "data_batch_1 is damaged"),
    BadInput("one image as dataset.path", _T, ["dataset=folder", "dataset.path={work}/size20/0.png"], "is a single image"),
    BadInput("16-bit image", _T, ["dataset=folder", "dataset.path={work}/deep16", "dataset.image_size=16"], "pixel mode"),
    # checkpoints given to resume=
    BadInput("missing checkpoint", _T, ["resume={work}/no_such.pt"], "no such checkpoint"),
    BadInput("truncated checkpoint", _T, ["resume={work}/truncated.pt"], "corrupt or truncated"),
    BadInput("not a checkpoint", _T, ["resume={work}/foreign.pt"], "not a ddpm checkpoint"),
    BadInput("pickle carrying code", _T, ["resume={work}/evil.pt"], "refused by the safe loader"),
    BadInput("checkpoint of another model", _T, ["resume={ckpt}", "model.channels=8"], "another config"),
    # the other commands
    BadInput("sample: zero samples", _S, ["ckpt={ckpt}", "num_samples=0"], "num_samples must be >= 1"),
    BadInput("sample: no checkpoint given", _S, [], "ckpt="),
    BadInput("sample: unknown sampler", _S, ["ckpt={ckpt}", "sampler=nope"], "sampler/nope"),
    BadInput("sample: zero sampler steps", _S, ["ckpt={ckpt}", "sampler.steps=0"], "sampler.steps"),
    BadInput("sample: pickle carrying code", _S, ["ckpt={work}/evil.pt"], "refused by the safe loader"),
    BadInput("sample: checkpoint without EMA", _S, ["ckpt={work}/no_ema.pt"], "holds no EMA weights"),
    BadInput("sample: weights of another shape", _S, ["ckpt={work}/wrong_shape.pt"], "but the model its config describes needs"),
    BadInput("sample: config key missing", _S, ["ckpt={work}/no_objective.pt"], "train.objective missing"),
    BadInput("sample: NaN weights", _S, ["ckpt={work}/nan_weights.pt"], "non-finite values"),
    BadInput("sample: sampler steps beyond T", _S, ["ckpt={ckpt}", "sampler.steps=1000"], "exceeds the schedule's T=100"),
    BadInput("sample: negative samples", _S, ["ckpt={ckpt}", "num_samples=-2"], "num_samples must be >= 1"),
    BadInput("evaluate: zero samples", "ddpm-evaluate", ["ckpt={ckpt}", "num_samples=0"], "num_samples"),
    BadInput("evaluate: unknown metric", "ddpm-evaluate", ["ckpt={ckpt}", "metrics=[bogus]"], "unknown metric"),
    BadInput("evaluate: truncated checkpoint", "ddpm-evaluate", ["ckpt={work}/truncated.pt"], "corrupt or truncated"),
    BadInput("visualize: zero images", "ddpm-visualize", ["ckpt={ckpt}", "num_images=0"], "num_images"),
    BadInput("visualize: negative time", "ddpm-visualize", ["ckpt={ckpt}", "times=[-1.0]"], "times must be > 0"),
    BadInput("visualize: not a checkpoint", "ddpm-visualize", ["ckpt={work}/foreign.pt"], "not a ddpm checkpoint"),
    BadInput("visualize: step beyond T", "ddpm-visualize", ["ckpt={ckpt}", "steps=[100000]"], "outside the schedule's 0..99"),
    BadInput("visualize: negative step", "ddpm-visualize", ["ckpt={ckpt}", "steps=[-1]"], "outside the schedule's 0..99"),
    BadInput("visualize: time beyond the end", "ddpm-visualize", ["ckpt={ckpt}", "times=[1000.0]"], "beyond the schedule's end"),
    BadInput("visualize: NaN time", "ddpm-visualize", ["ckpt={ckpt}", "times=[nan]"], "times must be > 0"),
    BadInput("regimes: unknown data", "ddpm-regimes", ["synthetic=nope"], "synthetic/nope"),
    BadInput("regimes: too few points", "ddpm-regimes", ["collapse.points=0"], "collapse.points"),
    BadInput("regimes: trained without checkpoint", "ddpm-regimes", ["regimes=trained"], "needs a checkpoint"),
    # the copy criterion's k, one key in every command
    BadInput("train: copy threshold of 1", _T, ["memorisation.threshold=1"], "memorisation.threshold must lie in (0, 1)"),
    BadInput(
        "evaluate: copy threshold of 0",
        "ddpm-evaluate",
        ["ckpt={ckpt}", "memorisation.threshold=0"],
        "memorisation.threshold must lie in (0, 1)",
    ),
    BadInput(
        "regimes: copy threshold above 1", "ddpm-regimes", ["memorisation.threshold=1.5"], "memorisation.threshold must lie in (0, 1)"
    ),
    BadInput("regimes: the old copy key", "ddpm-regimes", ["trained.memorised_ratio=0.3"], "use memorisation.threshold= instead"),
    BadInput("regimes: the old subset key", "ddpm-regimes", ["points.n=5"], "use dataset.n= (images) or synthetic.n= (synthetic laws)"),
    BadInput("regimes: one training point", "ddpm-regimes", ["synthetic=gaussian", "synthetic.n=1"], "synthetic.n must be >= 2"),
    BadInput("regimes: one training image", "ddpm-regimes", ["dataset.n=1"], "dataset.n must be >= 2 for ddpm-regimes"),
    BadInput("regimes: image subset key on a law", "ddpm-regimes", ["synthetic=gaussian", "dataset.n=100"], "set synthetic.n=100"),
    BadInput("regimes: collapse grid beyond t=40", "ddpm-regimes", ["collapse.t_max=1e6"], "collapse.t_max must be <= 40"),
    BadInput(
        "regimes: speciation beyond the schedule", "ddpm-regimes", ["speciation.t_max=100"], "speciation.t_max must be <= the last time"
    ),
    BadInput(
        "regimes: speciation beyond the checkpoint's schedule",
        "ddpm-regimes",
        ["ckpt={ckpt}", "speciation.t_min=2.0"],
        "speciation.t_min must lie below the last time of the schedule of",
    ),
    BadInput("regimes: huge image subset", "ddpm-regimes", ["dataset.n=1000000000000"], "dataset.n must lie in 1..100000000"),
    BadInput(
        "regimes: synthetic points beyond memory",
        "ddpm-regimes",
        ["synthetic=gaussian", "synthetic.n=100000000", "synthetic.d=64"],
        "values exceed the 1073741824",
    ),
    BadInput(
        "regimes: hierarchy of depth 0", "ddpm-regimes", ["synthetic=hierarchical", "synthetic.depth=0"], "synthetic.depth must be >= 1"
    ),
    BadInput(
        "regimes: hierarchy of branching 0",
        "ddpm-regimes",
        ["synthetic=hierarchical", "synthetic.branching=0"],
        "synthetic.branching must be >= 2",
    ),
    BadInput(
        "regimes: hierarchy level whose centres coincide",
        "ddpm-regimes",
        ["synthetic=hierarchical", "synthetic.separation=[2.0,0.0,0.3]"],
        "synthetic.separation must be > 0 (a level whose centres sit on their parents has Λ_ℓ = 0 and never separates)",
    ),
    BadInput(
        "regimes: potential class not in the dataset",
        "ddpm-regimes",
        ["dataset=mnist", "regimes=potential", "potential.classes=[0,12]"],
        "mnist has classes 0..9",
    ),
]
# The subset a --quick drill runs as real processes (the test suite runs all of them in-process, and
# tests/test_schema_walk.py six more as processes): a pickle carrying code, and a time beyond a
# checkpoint's schedule (refused once the checkpoint loads).
QUICK_BAD = (
    "pickle carrying code",
    "regimes: speciation beyond the checkpoint's schedule",
)


class Evil:
    """A pickle payload that creates a marker file when unpickled by an unsafe loader."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable, tuple]:
        return (os.system, (f"touch {self.marker}",))


def _png(side: int, rng: np.random.Generator, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _write_data_files(work: Path, rng: np.random.Generator) -> None:
    """Data roots holding one bad file each (see the data cases of :data:`BAD_INPUTS`)."""
    (work / "empty_root").mkdir(exist_ok=True)
    for name in ("mnist_truncated", "mnist_foreign"):
        raw = work / name / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        labels = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(range(10))
        images = (
            bytes([0, 0, 8, 3])
            + b"".join(d.to_bytes(4, "big") for d in (10, 28, 28))
            + rng.integers(0, 256, 7840, dtype=np.uint8).tobytes()
        )
        (raw / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
        good = gzip.compress(images)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(
            good[: len(good) // 2] if name == "mnist_truncated" else gzip.compress(b"<html>proxy login</html>")
        )
    (work / "punks_corrupt" / "cryptopunks").mkdir(parents=True, exist_ok=True)
    sheet = _png(48, rng)
    (work / "punks_corrupt" / "cryptopunks" / "punks.png").write_bytes(sheet[:60] + bytes(200) + sheet[260:])
    for name in ("cats_truncated", "cats_empty"):
        (work / name / "cats").mkdir(parents=True, exist_ok=True)
        tar_path = work / name / "cats" / "afhq_cat_64.tar"
        with tarfile.open(tar_path, "w") as tar:
            for i in range(3):
                data = _png(64, rng)
                info = tarfile.TarInfo(f"{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        tar_path.write_bytes(tar_path.read_bytes()[: 512 + 300] if name == "cats_truncated" else b"")
    batches = work / "cifar_damaged" / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (batches / name).write_bytes(b"\x80\x04 a download cut short")
    (work / "deep16").mkdir(exist_ok=True)
    (work / "deep16" / "0.png").write_bytes(_png(16, rng, "I;16"))


def _write_bad_checkpoints(work: Path, ckpt: Path) -> None:
    """Checkpoints that load but cannot work (see the ``sample:`` checkpoint cases of :data:`BAD_INPUTS`)."""
    from ddpm.checkpoint import load_checkpoint

    def variant(name: str, change: Callable[[dict], None]) -> None:
        state = load_checkpoint(ckpt)
        change(state)
        torch.save(state, work / name)

    def wrong_shape(s: dict) -> None:
        key = next(iter(s["ema"]))
        s["ema"][key] = torch.zeros(*s["ema"][key].shape[:-1], s["ema"][key].shape[-1] + 1)

    def nan_weights(s: dict) -> None:
        key = next(k for k, v in s["ema"].items() if v.is_floating_point())
        s["ema"][key] = s["ema"][key].clone()
        s["ema"][key].view(-1)[0] = float("nan")

    variant("no_ema.pt", lambda s: s.pop("ema"))
    variant("wrong_shape.pt", wrong_shape)
    variant("no_objective.pt", lambda s: s["config"]["train"].pop("objective"))
    variant("nan_weights.pt", nan_weights)


def make_bad_input_files(work: Path, ckpt: Path) -> None:
    """Write the folders and files the :data:`BAD_INPUTS` refer to.

    Args:
        work: folder to fill (``{work}`` in the arguments).
        ckpt: a real tiny checkpoint (``model=tiny``, T=100) to truncate and alter.
    """
    work.mkdir(parents=True, exist_ok=True)
    (work / "empty").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, side in (("size20", 20), ("size30", 30)):
        (work / name).mkdir(exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(work / name / f"{i}.png")
    (work / "corrupt").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(work / "corrupt" / "0.png")
    (work / "corrupt" / "1.png").write_text("this is not a PNG file\n")
    data = ckpt.read_bytes()
    (work / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, work / "foreign.pt")
    torch.save(Evil(work / "EXECUTED"), work / "evil.pt")
    _write_data_files(work, rng)
    _write_bad_checkpoints(work, ckpt)


def bad_input_args(case: BadInput, work: Path, ckpt: Path, run_dir: Path, data_dir: Path) -> list[str]:
    """The full command line (without the program) of ``case``, run into ``run_dir``.

    Args:
        case: the bad input.
        work: the folder :func:`make_bad_input_files` filled.
        ckpt: the real tiny checkpoint.
        run_dir: ``hydra.run.dir``.
        data_dir: the real data root (the case's own ``paths.data_dir=`` comes later and wins).
    """
    args = [a.format(work=work, ckpt=ckpt) for a in case.args]
    if case.cmd == _T:
        base = drill_train_overrides(data_dir, work / "cache", **{"train.max_steps": 2})
    else:
        base = [f"paths.data_dir={data_dir}", f"paths.cache_dir={work / 'cache'}"]
    return [*base, *args, f"hydra.run.dir={run_dir}"]


def check_one_line(rc: int | None, stderr: str, expect: str) -> str | None:
    """None when the run failed with exactly one ``error:`` line containing ``expect``, else why not.

    Args:
        rc: the exit code.
        stderr: everything the run wrote to stderr.
        expect: the substring the line must contain (case-insensitive).
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if rc in (0, None):
        return f"exit code {rc}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr has {len(lines)} lines: {stderr.strip()[-300:]!r}"
    if expect.lower() not in lines[0].lower():
        return f"{expect!r} not in {lines[0]!r}"
    return None
