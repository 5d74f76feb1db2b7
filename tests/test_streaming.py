"""Datasets larger than memory: ``dataset.in_memory`` (auto / true / false), the streaming loader's
order, flips, rank shares and exact resume, the centre crop before resizing, and bad files as one
line. Every dataset is a handful of tiny images made here."""

from __future__ import annotations

import os
import signal
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, encoded, make_folder, write_tar
from conftest import folder_cfg as shared_folder_cfg
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ddpm.checkpoint import load_checkpoint
from ddpm.data import load_dataset
from ddpm.data.datasets import decode_image
from ddpm.data.residency import check_residency, decoded_bytes, keep_in_memory
from ddpm.data.sources import index_source
from ddpm.data.streaming import StreamingBatches, epoch_permutation, epoch_plan, open_stream, rank_rows, training_index
from ddpm.errors import CheckpointError, ConfigError, DataError
from ddpm.train import Trainer

RNG = np.random.default_rng(0)


def folder_cfg(path: Path, **kw: object) -> DictConfig:
    """The shared folder node, streamed unless a test says otherwise."""
    return shared_folder_cfg(path, **{"in_memory": False, **kw})


def stream(d: DictConfig, root: Path, **kw: object) -> StreamingBatches:
    s = open_stream(d, root, **{"seed": 0, "batch_size": 4, "workers": 0, **kw})
    assert s is not None
    return s


# ---------------------------------------------------------------------------- crop, then resize
def test_non_square_images_are_cropped_then_resized(tmp_path: Path) -> None:
    arr = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)  # 40 wide, 24 high
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.png").write_bytes(encoded(arr))
    want = np.asarray(Image.fromarray(arr).crop((8, 0, 32, 24)).resize((8, 8), Image.LANCZOS)).transpose(2, 0, 1)
    distorted = np.asarray(Image.fromarray(arr).resize((8, 8), Image.LANCZOS)).transpose(2, 0, 1)
    assert not np.array_equal(want, distorted)  # the test tells the two apart
    cfg = folder_cfg(d, resize=True, test_fraction=0.0, in_memory=True)
    assert np.array_equal(load_dataset(cfg, tmp_path, tmp_path / "cache").images[0].numpy(), want)
    assert np.array_equal(decode_image(d / "a.png", 3, 8, True, "a.png"), want)  # the streaming path decodes the same
    tall = np.ascontiguousarray(arr.transpose(1, 0, 2))  # 24 wide, 40 high: rows 8..31 kept
    want_tall = np.asarray(Image.fromarray(tall).crop((0, 8, 24, 32)).resize((8, 8), Image.LANCZOS)).transpose(2, 0, 1)
    (d / "a.png").write_bytes(encoded(tall))
    assert np.array_equal(decode_image(d / "a.png", 3, 8, True, "a.png"), want_tall)


def test_cache_of_the_old_decoding_is_not_reused(tmp_path: Path) -> None:
    """A cache written before the crop fix (another key) is not read: the cache key names the decoder version."""
    d = make_folder(tmp_path / "imgs", 3)
    load_dataset(folder_cfg(d, in_memory=True), tmp_path, tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("*.npy")
    import ddpm.data.datasets as ds

    old = ds.DECODE_VERSION
    try:
        ds.DECODE_VERSION = old - 1
        load_dataset(folder_cfg(d, in_memory=True), tmp_path, tmp_path / "cache")
    finally:
        ds.DECODE_VERSION = old
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2 and cache.is_file()


# ---------------------------------------------------------------------------- auto / true / false
def test_auto_decides_by_decoded_size(tmp_path: Path) -> None:
    d = make_folder(tmp_path / "imgs", 10)
    size = decoded_bytes(10, 3, 8)  # 10 images x 3 x 8 x 8 = 1920 bytes
    assert size == 1920
    at = folder_cfg(d, in_memory="auto", in_memory_max_gb=size / 2**30)
    below = folder_cfg(d, in_memory="auto", in_memory_max_gb=(size - 1) / 2**30)
    assert keep_in_memory(at, 10) is True and keep_in_memory(below, 10) is False
    assert open_stream(at, tmp_path, seed=0, batch_size=2, workers=0) is None
    assert open_stream(below, tmp_path, seed=0, batch_size=2, workers=0) is not None
    assert keep_in_memory(folder_cfg(d, in_memory=True, in_memory_max_gb=1e-9), 10) is True
    assert keep_in_memory(folder_cfg(d, in_memory=False, in_memory_max_gb=1000.0), 10) is False
    mnist = OmegaConf.create({"name": "mnist", "channels": 1, "image_size": 32, "in_memory": "auto", "in_memory_max_gb": 1e-9})
    assert keep_in_memory(mnist, None) is True  # cannot stream: always in memory
    mnist.in_memory = False
    with pytest.raises(ConfigError, match=r"^dataset.in_memory=false streams image folders and tars .*mnist is read whole"):
        keep_in_memory(mnist, None)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("in_memory", "sometimes", "dataset.in_memory must be auto, true or false, got 'sometimes'"),
        ("in_memory", 1, "dataset.in_memory must be auto, true or false, got 1"),
        ("in_memory_max_gb", 0.0, "dataset.in_memory_max_gb must be a number of GiB > 0"),
        ("in_memory_max_gb", float("nan"), "dataset.in_memory_max_gb must be a number of GiB > 0"),
        ("workers", 0, "dataset.workers must lie in 1..256 or be null"),
    ],
)
def test_bad_residency_values_are_one_line(key: str, value: object, message: str, tmp_path: Path) -> None:
    d = folder_cfg(tmp_path, **{key: value})
    with pytest.raises(ConfigError) as info:
        check_residency(d)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="^" + message.split(" must")[0]):
        load_dataset(d, tmp_path, tmp_path / "cache")  # every command that loads the dataset checks it


# ---------------------------------------------------------------------------- order, flips, ranks
def test_stream_reads_the_in_memory_batches(tmp_path: Path) -> None:
    """Same train split, same epoch permutations, same pixels: batch after batch over three epochs."""
    d = make_folder(tmp_path / "imgs", 23)
    mem = load_dataset(folder_cfg(d, in_memory=True), tmp_path, tmp_path / "cache").images  # 21 after the 10% split
    s = stream(folder_cfg(d), tmp_path, batch_size=5)
    assert len(s) == len(mem) == 21
    for epoch in range(3):
        perm = epoch_permutation(0, epoch, 21)
        for pos in range(4):  # 4 batches of 5; the 21st image waits for another epoch's order
            assert torch.equal(s.next(), mem[perm[pos * 5 : (pos + 1) * 5]]), (epoch, pos)
    assert s.position == (2, 20)


def test_flips_are_seeded_per_epoch_and_image(tmp_path: Path) -> None:
    d = make_folder(tmp_path / "imgs", 20)
    mem = load_dataset(folder_cfg(d, in_memory=True, test_fraction=0.0), tmp_path, tmp_path / "cache").images
    s = stream(folder_cfg(d, hflip=True, test_fraction=0.0), tmp_path, batch_size=20)
    flipped = []
    for epoch in range(2):
        batch = s.next()
        perm, flips = epoch_plan(0, epoch, 20, True)
        for row, i in enumerate(perm):
            want = mem[i].flip(-1) if flips[i] else mem[i]
            assert torch.equal(batch[row], want), (epoch, row)
        flipped.append(flips.copy())
    assert 0 < flipped[0].sum() < 20 and not np.array_equal(flipped[0], flipped[1])


def test_rank_shares_make_up_the_global_batch(tmp_path: Path) -> None:
    """2 ranks x 2 micro-batches x 3 images: each rank reads its blocks, together the 1-process batch."""
    d = make_folder(tmp_path / "imgs", 30)
    cfg = folder_cfg(d, test_fraction=0.0)
    whole = stream(cfg, tmp_path, batch_size=12)
    ranks = [stream(cfg, tmp_path, batch_size=3, accum=2, rank=r, world_size=2) for r in range(2)]
    assert rank_rows(3, 2, 1, 2).tolist() == [3, 4, 5, 9, 10, 11]
    for _ in range(4):  # across the epoch end (30 // 12 = 2 batches per epoch)
        g = whole.next()
        r0, r1 = (r.next() for r in ranks)
        assert torch.equal(torch.cat([r0[:3], r1[:3], r0[3:], r1[3:]]), g)
    assert ranks[0].position == ranks[1].position == whole.position == (1, 24)


def test_resume_continues_with_the_same_batches(tmp_path: Path) -> None:
    """Two worker processes, flips on: 3 batches, a checkpoint, a new loader from it = the uninterrupted batches."""
    d = make_folder(tmp_path / "imgs", 26)
    cfg = folder_cfg(d, hflip=True)
    full = stream(cfg, tmp_path, workers=2)
    want = [full.next() for _ in range(8)]  # 23 images: 5 batches of 4 per epoch, so 8 crosses into epoch 1
    first = stream(cfg, tmp_path, workers=2)
    got = [first.next() for _ in range(3)]
    state = first.state_dict()
    first.close()
    assert state == {"epoch": 0, "offset": 12, "images": 23, "global_batch": 4, "seed": 0}
    resumed = stream(cfg, tmp_path, workers=2)
    resumed.load_state_dict(state, step=3, where="ckpt.pt")
    got += [resumed.next() for _ in range(5)]
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a, b)
    from_step = stream(cfg, tmp_path)  # a checkpoint without a position (an in-memory run's): from its step
    from_step.load_state_dict(None, step=6, where="ckpt.pt")
    assert torch.equal(from_step.next(), want[6])
    with pytest.raises(CheckpointError, match=r"^ckpt.pt streamed 22 training images, but .* now holds 23; point the dataset"):
        resumed.load_state_dict({**state, "images": 22}, step=3, where="ckpt.pt")


def test_workers_leave_ctrl_c_and_sigterm_to_the_training_process(tmp_path: Path) -> None:
    s = stream(folder_cfg(make_folder(tmp_path / "imgs", 12)), tmp_path, workers=1)
    s.next()
    (pid,) = (w.pid for w in s._batches._workers)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # what a Ctrl-C or a scheduler sends the process group
        os.kill(pid, sig)
    time.sleep(0.2)
    assert s.next().shape == (4, 3, 8, 8)  # the worker lives on
    s.close()


# ---------------------------------------------------------------------------- larger than the memory cap
def test_folder_larger_than_the_memory_cap_streams(tmp_path: Path) -> None:
    """A 480-image folder, 1.4 MiB decoded, under a 1 MiB cap: auto streams it, and a pass over all of
    it holds under a quarter of the cap (one batch and a decoder's read buffer), where loading it
    whole takes more than the cap (both measured by tracemalloc, which sees numpy's buffers)."""
    d = make_folder(tmp_path / "imgs", 480, side=32)
    cap = 2**20
    cfg = folder_cfg(d, image_size=32, in_memory="auto", in_memory_max_gb=cap / 2**30, test_fraction=0.0)
    assert decoded_bytes(480, 3, 32) == 1_474_560 > cap
    s = open_stream(cfg, tmp_path, seed=0, batch_size=8, workers=0)
    assert s is not None
    tracemalloc.start()
    try:
        seen = sum(len(s.next()) for _ in range(len(s) // 8))
        _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        load_dataset(folder_cfg(d, image_size=32, in_memory=True, test_fraction=0.0), tmp_path, tmp_path / "cache")
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 480
    assert stream_peak < cap / 4 and memory_peak > cap, (stream_peak, memory_peak)


# ---------------------------------------------------------------------------- shards and bad files
def test_webdataset_shards_stream_and_load_alike(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(2):
        members = {}
        for i in range(5):
            members[f"{s}{i:05d}.png"] = encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            members[f"{s}{i:05d}.cls"] = b"3"  # not an image: ignored
        write_tar(shards / f"shard-{s:06d}.tar", members)
    index = index_source(shards)
    assert len(index) == 10 and index.where(6) == f"{shards / 'shard-000001.tar'}:100001.png"
    mem = load_dataset(folder_cfg(shards, in_memory=True, test_fraction=0.0), tmp_path, tmp_path / "cache").images
    s = stream(folder_cfg(shards, test_fraction=0.0), tmp_path, batch_size=10)
    assert torch.equal(s.next(), mem[epoch_permutation(0, 0, 10)])


def test_bad_files_are_one_line_naming_them(tmp_path: Path) -> None:
    d = make_folder(tmp_path / "imgs", 8)
    bad = d / "part1" / "00003.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    s = stream(folder_cfg(d, test_fraction=0.0), tmp_path, batch_size=8, workers=1)
    with pytest.raises(DataError) as info:
        s.next()
    msg = str(info.value)
    assert msg.startswith(f"cannot read image {bad}: ") and "\n" not in msg
    tar = write_tar(tmp_path / "a.tar", {"a.png": encoded(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))})
    gz = tmp_path / "a.tar.gz"
    with tarfile.open(gz, "w:gz") as out:
        out.add(tar, "a.tar")
    with pytest.raises(DataError, match=rf"^{gz} is a compressed tar; streaming reads images by offset"):
        index_source(gz)
    torn = tmp_path / "torn.tar"
    torn.write_bytes(tar.read_bytes()[:600])  # header, then 88 of the member's bytes
    with pytest.raises(DataError, match=rf"^{torn} is truncated or corrupt: unexpected end of data$"):
        index_source(torn)
    index = index_source(tar)
    tar.write_bytes(tar.read_bytes()[:600])  # torn after it was indexed (replaced during a run)
    with pytest.raises(DataError, match=rf"^cannot read {tar}:a.png from the archive \(truncated\): 88 of \d+ bytes$"):
        index.read(0)


def test_wrong_size_fails_before_training(tmp_path: Path) -> None:
    d = make_folder(tmp_path / "imgs", 4, side=12)
    with pytest.raises(DataError, match=r"is 12x12, expected 8x8 \(set dataset.resize=true to resize\)$"):
        open_stream(folder_cfg(d), tmp_path, seed=0, batch_size=2, workers=0)


def test_subset_n_streams_the_in_memory_subset(tmp_path: Path) -> None:
    from ddpm.data.subset import load_training_set

    d = make_folder(tmp_path / "imgs", 20)
    index, record = training_index(folder_cfg(d, n=7, subset_seed=3), tmp_path)
    mem = load_training_set(folder_cfg(d, n=7, subset_seed=3, in_memory=True), tmp_path, tmp_path / "cache")
    assert record["sha256"] == mem.subset["sha256"] and len(index) == 7
    assert all(np.array_equal(decode_image(index.read(i), 3, 8, False, ""), mem.images[i].numpy()) for i in range(7))


# ---------------------------------------------------------------------------- ddpm-train
def train_overrides(root: Path, folder: Path, **over: object) -> list[str]:
    base = {
        "dataset": "folder",
        "dataset.path": str(folder),
        "dataset.image_size": 16,
        "dataset.hflip": False,  # the in-memory run flips with other random numbers
        "dataset.workers": 1,
        "model": "tiny",
        "paths.data_dir": str(root),
        "paths.cache_dir": str(root / "cache"),
        "train.batch_size": 4,
        "train.grad_accum_steps": 2,
        "train.lr": 1e-3,
        "train.warmup_steps": 0,
        "train.log_every": 0,
        "train.sample_every": 0,
        "train.num_sample_images": 0,
        "train.progress": False,
        "schedule.T": 50,
        "runtime.num_threads": 1,  # two threads on a busy 2-core machine wait on each other
    }
    base.update(over)
    return [f"{k}={v}" for k, v in base.items()]


def train_cfg(root: Path, folder: Path, **over: object) -> DictConfig:
    return compose_config("train", train_overrides(root, folder, **over))


def params(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_streamed_training_equals_in_memory_and_resumes_exactly(tmp_path: Path) -> None:
    """6 steps (an epoch is 4: 36 training images, global batch 8 = 4 x 2 micro-batches) streamed equal
    the in-memory run bit for bit; resumed from its step-3 checkpoint, 3 more steps equal them too."""
    folder = make_folder(tmp_path / "imgs", 40, side=16)
    memory = Trainer(train_cfg(tmp_path, folder, **{"dataset.in_memory": True}), tmp_path / "m")
    streamed = Trainer(train_cfg(tmp_path, folder, **{"dataset.in_memory": False}), tmp_path / "s")
    assert memory.stream is None and streamed.stream is not None and streamed.images is None
    for step in range(6):
        memory.train_step()
        streamed.train_step()
        if step == 2:
            ckpt = streamed.save()
    for a, b in zip(params(memory), params(streamed), strict=True):
        assert torch.equal(a, b)
    assert load_checkpoint(ckpt)["data_position"] == {"epoch": 0, "offset": 24, "images": 36, "global_batch": 8, "seed": 0}
    resumed = Trainer(train_cfg(tmp_path, folder, **{"dataset.in_memory": False}), tmp_path / "r")
    resumed.resume(str(ckpt))
    for _ in range(3):
        resumed.train_step()
    assert resumed.stream.position == streamed.stream.position == (1, 16)
    for a, b in zip(params(streamed), params(resumed), strict=True):
        assert torch.equal(a, b)
    for t in (streamed, resumed):
        t.stream.close()


def test_train_under_a_memory_cap_streams(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "imgs", 40, side=16)
    cap = decoded_bytes(40, 3, 16) // 2
    trainer = Trainer(train_cfg(tmp_path, folder, **{"dataset.in_memory_max_gb": cap / 2**30}), tmp_path / "r")
    assert trainer.stream is not None and trainer.images is None and trainer.num_images == 36
    assert "streamed by 1 loader worker per rank" in trainer.describe()
    with pytest.raises(ConfigError, match="^train.regimes_every needs the training images in memory"):
        Trainer(train_cfg(tmp_path, folder, **{"dataset.in_memory": False, "train.regimes_every": 5}), tmp_path / "q")


@pytest.mark.slow
def test_two_ranks_streaming_match_one_process_in_memory(tmp_path: Path) -> None:
    """torchrun with 2 ranks (gloo), each streaming its half of every batch, trains what one in-memory process trains."""
    import json
    import subprocess
    import sys

    from ddpm.train import train

    folder = make_folder(tmp_path / "imgs", 40, side=16)
    common = {"train.max_steps": 6, "train.ckpt_every": 6, "train.log_every": 3, "train.grad_accum_steps": 1}
    single = tmp_path / "single"
    train(train_cfg(tmp_path, folder, **{**common, "train.batch_size": 8, "dataset.in_memory": True}), single)
    ddp = tmp_path / "ddp"
    overrides = train_overrides(tmp_path, folder, **{**common, "train.batch_size": 4, "dataset.in_memory": False}) + [
        f"hydra.run.dir={ddp}"
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm.train", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (single, ddp))
    assert b["step"] == 6 and b["data_position"] == {"epoch": 1, "offset": 16, "images": 36, "global_batch": 8, "seed": 0}
    losses = [json.loads((d / "metrics.json").read_text())["loss"] for d in (single, ddp)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, value in a["model"].items():  # gradients summed in another order: within a tenth of an Adam step
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=1e-4, msg=name)
    assert "streamed by 1 loader worker per rank" in (ddp / "train.log").read_text()
