"""Bad data files: every loader answers a truncated, corrupt, foreign, empty or mixed file with one
line that names the file, and a failed download with one line saying what it tried and where the
files go. The files are built here, in temporary folders."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tar
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from ddpm.data import datasets as ds_mod
from ddpm.data import load_dataset
from ddpm.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def dataset_cfg(name: str, **kw: object) -> DictConfig:
    """A ``dataset`` node with the schema's defaults (as a composed config would hold them)."""
    roots = {"mnist": "MNIST", "cryptopunks": "cryptopunks", "cats": "cats", "cifar10": "cifar10", "folder": ""}
    base = dict(
        name=name,
        root=roots[name],
        image_size={"mnist": 32, "cryptopunks": 24, "cats": 16, "cifar10": 32, "folder": 16}[name],
        channels=1 if name == "mnist" else 3,
        hflip=False,
        resize=False,
        download=False,
        background=[99, 133, 150],
        path=None,
        test_fraction=0.1,
        num_classes=10 if name in ("mnist", "cifar10") else None,
    )
    base.update(kw)
    return OmegaConf.create(base)


def one_line(exc_type: type[Exception], cfg: DictConfig, root: Path, split: str = "train") -> str:
    """The error message of loading ``cfg`` from ``root``; asserts it is a single line."""
    with pytest.raises(exc_type) as info:
        load_dataset(cfg, root, root / "cache", split)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    return msg


def png_bytes(side: int = 16, mode: str = "RGB", w: int | None = None) -> bytes:
    shape = (side, w or side) if mode in ("L", "P") else (side, w or side, len(mode))
    arr = RNG.integers(0, 256, shape, dtype=np.uint8)
    img = Image.fromarray(arr, "L" if mode == "P" else mode)
    if mode == "P":
        img = img.convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png16_bytes(side: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 65535, (side, side), dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- MNIST IDX
def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.astype(np.uint8).tobytes()


def write_mnist(root: Path, n: int = 5, images: bytes | None = None, labels: bytes | None = None, gz: bool = True) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    img = idx_bytes(RNG.integers(0, 256, (n, 28, 28))) if images is None else images
    lbl = idx_bytes(RNG.integers(0, 10, (n,))) if labels is None else labels
    suffix = ".gz" if gz else ""
    (raw / f"train-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(img) if gz else img)
    (raw / f"train-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(lbl) if gz else lbl)
    return raw


def test_mnist_good_files_load(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=5)
    data = load_dataset(dataset_cfg("mnist"), tmp_path, tmp_path / "cache")
    assert tuple(data.images.shape) == (5, 1, 32, 32) and data.labels.shape == (5,)


def test_mnist_single_image_loads(tmp_path: Path) -> None:
    write_mnist(tmp_path, n=1)
    assert len(load_dataset(dataset_cfg("mnist"), tmp_path, tmp_path / "cache")) == 1


def test_mnist_truncated_gzip(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)
    f = raw / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:40])
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert str(f) in msg and "truncated or not a gzip file" in msg


def test_mnist_truncated_idx(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, gz=False)
    f = raw / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:1000])
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert msg == f"{f} is truncated: its header announces 5x28x28 = 3920 bytes, it holds 984"


def test_mnist_foreign_format(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)
    f = raw / "train-images-idx3-ubyte.gz"
    f.write_bytes(png_bytes())  # a PNG under the IDX name
    assert str(f) in one_line(DataError, dataset_cfg("mnist"), tmp_path)
    f.write_bytes(gzip.compress(b"<html>404 not found</html>"))  # an error page saved by a proxy
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert msg.startswith(f"{f} is not an MNIST IDX file of unsigned bytes")


def test_mnist_empty_file(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path)
    f = raw / "train-images-idx3-ubyte.gz"
    f.write_bytes(b"")
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert str(f) in msg


def test_mnist_labels_for_images(tmp_path: Path) -> None:
    labels = idx_bytes(RNG.integers(0, 10, (5,)))
    write_mnist(tmp_path, images=labels)  # the labels file copied over the images file
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert msg.endswith("holds 1-dimensional data, expected 3 (images)")


def test_mnist_count_mismatch(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n=5, labels=idx_bytes(RNG.integers(0, 10, (4,))))
    msg = one_line(DataError, dataset_cfg("mnist"), tmp_path)
    assert msg == f"{raw / 'train-images-idx3-ubyte.gz'} holds 5 images but {raw / 'train-labels-idx1-ubyte.gz'} holds 4 labels"


def test_mnist_label_out_of_range(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n=3, labels=idx_bytes(np.array([1, 12, 3])))
    assert one_line(DataError, dataset_cfg("mnist"), tmp_path) == f"{raw / 'train-labels-idx1-ubyte.gz'} holds label 12, outside 0..9"


def test_mnist_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's many-line report becomes one line with the mirrors, the reason and the files to put where."""
    import torchvision.datasets

    seen = {}

    class Offline:
        mirrors = torchvision.datasets.MNIST.mirrors

        def __init__(self, *a: object, **k: object) -> None:
            import socket

            seen["timeout"] = socket.getdefaulttimeout()
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error [Errno -2] Name or service not known>\n"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    msg = one_line(DataError, dataset_cfg("mnist", download=True), tmp_path)
    assert msg.startswith("could not download MNIST (tried https://")
    assert ": [Errno -2] Name or service not known); put train-images-idx3-ubyte.gz, " in msg
    assert f"into {tmp_path / 'MNIST' / 'raw'}/" in msg
    assert seen["timeout"] == ds_mod.DOWNLOAD_TIMEOUT_S  # a dropped connection cannot hang the download
    import socket

    assert socket.getdefaulttimeout() is None  # restored


# ---------------------------------------------------------------------------- CryptoPunks sheet
def write_sheet(root: Path, data: bytes) -> Path:
    (root / "cryptopunks").mkdir(parents=True, exist_ok=True)
    path = root / "cryptopunks" / "punks.png"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "kind, expect",
    [
        ("truncated", "cannot read image {f}: "),
        ("corrupt", "cannot read image {f}: "),
        ("empty", "cannot read image {f}: empty file"),
        ("16-bit", "{f} has pixel mode I;16"),
        ("not a grid", "{f} is 50x48; a CryptoPunks sheet is a grid of 24x24 tiles"),
    ],
)
def test_cryptopunks_bad_sheet(kind: str, expect: str, tmp_path: Path) -> None:
    good = png_bytes(48, "RGBA")
    data = {
        "truncated": good[: len(good) // 2],
        "corrupt": good[:60] + bytes(200) + good[260:],
        "empty": b"",
        "16-bit": png16_bytes(48),
        "not a grid": png_bytes(48, "RGBA", w=50),
    }[kind]
    f = write_sheet(tmp_path, data)
    assert one_line(DataError, dataset_cfg("cryptopunks"), tmp_path).startswith(expect.format(f=f))


def test_cryptopunks_single_punk(tmp_path: Path) -> None:
    f = write_sheet(tmp_path, png_bytes(24, "RGBA"))
    assert len(load_dataset(dataset_cfg("cryptopunks"), tmp_path, tmp_path / "cache")) == 1
    assert one_line(DataError, dataset_cfg("cryptopunks"), tmp_path, "test") == f"the test split of cryptopunks at {f} is empty"


# ---------------------------------------------------------------------------- cats tar
def write_cats_tar(root: Path, members: dict[str, bytes]) -> Path:
    (root / "cats").mkdir(parents=True, exist_ok=True)
    return write_tar(root / "cats" / "afhq_cat_64.tar", members)


def test_cats_tar_loads_mixed_modes(tmp_path: Path) -> None:
    write_cats_tar(tmp_path, {f"{i}.png": png_bytes(16, m) for i, m in enumerate(("RGB", "L", "RGBA", "P"))})
    data = load_dataset(dataset_cfg("cats", test_fraction=0.0), tmp_path, tmp_path / "cache")
    assert tuple(data.images.shape) == (4, 3, 16, 16)


def test_cats_tar_truncated(tmp_path: Path) -> None:
    f = write_cats_tar(tmp_path, {f"{i}.png": png_bytes() for i in range(3)})
    f.write_bytes(f.read_bytes()[: 512 + 300])  # the first member's header and part of its data
    msg = one_line(DataError, dataset_cfg("cats"), tmp_path)
    assert msg == f"{f} is truncated or corrupt: unexpected end of data"


def test_cats_tar_corrupt_and_foreign(tmp_path: Path) -> None:
    f = write_cats_tar(tmp_path, {})
    f.write_bytes(os.urandom(4096))
    assert one_line(DataError, dataset_cfg("cats"), tmp_path).startswith(f"{f} is not a readable tar archive")
    with zipfile.ZipFile(f, "w") as z:  # a zip under the tar name
        z.writestr("0.png", png_bytes())
    assert one_line(DataError, dataset_cfg("cats"), tmp_path).startswith(f"{f} is not a readable tar archive")


def test_cats_tar_empty(tmp_path: Path) -> None:
    f = write_cats_tar(tmp_path, {})
    f.write_bytes(b"")
    assert one_line(DataError, dataset_cfg("cats"), tmp_path) == f"{f} is empty (0 bytes); expected a .tar of images"
    write_cats_tar(tmp_path, {"README.txt": b"no images here"})
    assert one_line(DataError, dataset_cfg("cats"), tmp_path).startswith(
        f"no images (.png, .jpg, .jpeg, .bmp, .webp, .gif, .tif, .tiff) found in {f}"
    )


def test_cats_tar_bad_members(tmp_path: Path) -> None:
    f = write_cats_tar(tmp_path, {"a.png": png_bytes(), "b.png": png_bytes(20)})
    assert one_line(DataError, dataset_cfg("cats"), tmp_path) == f"{f}:b.png is 20x20, expected 16x16 (set dataset.resize=true to resize)"
    f = write_cats_tar(tmp_path, {"a.png": png_bytes(), "b.png": png16_bytes()})
    assert one_line(DataError, dataset_cfg("cats"), tmp_path).startswith(f"{f}:b.png has pixel mode I;16")
    f = write_cats_tar(tmp_path, {"a.png": png_bytes(), "b.png": b"not a png"})
    assert one_line(DataError, dataset_cfg("cats"), tmp_path).startswith(f"cannot read image {f}:b.png: ")


def test_cats_single_image(tmp_path: Path) -> None:
    write_cats_tar(tmp_path, {"a.png": png_bytes()})
    assert len(load_dataset(dataset_cfg("cats"), tmp_path, tmp_path / "cache")) == 1


# ---------------------------------------------------------------------------- CIFAR-10
def test_cifar_missing(tmp_path: Path) -> None:
    (tmp_path / "cifar10").mkdir()
    msg = one_line(DataError, dataset_cfg("cifar10"), tmp_path)
    assert msg.startswith(f"CIFAR-10 dataset not found: looked for {tmp_path / 'cifar10' / 'cifar-10-batches-py'}")
    assert "cifar-10-python.tar.gz" in msg


def test_cifar_damaged_and_missing_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (folder / name).write_bytes(b"\x80\x04garbage")
    msg = one_line(DataError, dataset_cfg("cifar10"), tmp_path)
    assert msg.startswith(f"CIFAR-10 file {folder / 'data_batch_1'} is damaged")
    (folder / "test_batch").unlink()
    msg = one_line(DataError, dataset_cfg("cifar10"), tmp_path, "test")
    assert msg.startswith(f"CIFAR-10 file {folder / 'test_batch'} is missing")


def test_cifar_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    real = torchvision.datasets.CIFAR10

    class Offline(real):
        def __init__(self, *a: object, **k: object) -> None:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    msg = one_line(DataError, dataset_cfg("cifar10", download=True), tmp_path)
    assert msg.startswith(f"could not download CIFAR-10 (tried {real.url}: [Errno -3] Temporary failure in name resolution); put ")
    assert f"into {tmp_path / 'cifar10'}/" in msg


# ---------------------------------------------------------------------------- folder
def folder_cfg(path: Path, **kw: object) -> DictConfig:
    return dataset_cfg("folder", path=str(path), test_fraction=0.0, **kw)


def test_folder_empty_and_single_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    assert one_line(DataError, folder_cfg(tmp_path / "imgs"), tmp_path).startswith("no images (.png")
    (tmp_path / "one.png").write_bytes(png_bytes())
    msg = one_line(DataError, folder_cfg(tmp_path / "one.png"), tmp_path)
    assert msg == f"{tmp_path / 'one.png'} is a single image; give a folder or a .tar of images"


def test_folder_truncated_and_empty_image(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.png").write_bytes(png_bytes())
    good = png_bytes()
    (d / "b.png").write_bytes(good[: len(good) // 2])
    assert one_line(DataError, folder_cfg(d), tmp_path).startswith(f"cannot read image {d / 'b.png'}: ")
    (d / "b.png").write_bytes(b"")
    assert one_line(DataError, folder_cfg(d), tmp_path) == f"cannot read image {d / 'b.png'}: empty file"


def test_folder_mixed_sizes_and_modes(tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (side, mode) in enumerate(((16, "RGB"), (20, "L"), (24, "RGBA"), (16, "P"))):
        (d / f"{i}.png").write_bytes(png_bytes(side, mode))
    msg = one_line(DataError, folder_cfg(d), tmp_path)
    assert msg == f"{d / '1.png'} is 20x20, expected 16x16 (set dataset.resize=true to resize)"
    for channels in (1, 3):
        data = load_dataset(folder_cfg(d, resize=True, channels=channels), tmp_path, tmp_path / f"cache{channels}")
        assert tuple(data.images.shape) == (4, channels, 16, 16)


def test_folder_damaged_cache_is_decoded_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(png_bytes())
    first = load_dataset(folder_cfg(d), tmp_path, tmp_path / "cache").images
    (cache,) = (tmp_path / "cache").glob("*.npy")
    cache.write_bytes(cache.read_bytes()[:100])
    again = load_dataset(folder_cfg(d), tmp_path, tmp_path / "cache").images
    assert torch.equal(first, again)
    assert "ignoring the unreadable image cache" in caplog.text


def test_folder_without_path_is_a_config_error(tmp_path: Path) -> None:
    assert one_line(ConfigError, dataset_cfg("folder"), tmp_path).startswith("dataset=folder needs dataset.path=")


# ---------------------------------------------------------------------------- Inception weights
def test_inception_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.utils

    from ddpm.evaluate.fidelity import INCEPTION_FILE, INCEPTION_NAME, INCEPTION_URL, fidelity_metrics

    def offline(*args: object, **kwargs: object) -> None:  # where torch-fidelity fetches the weights
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch_fidelity.utils, "create_feature_extractor", offline)
    imgs = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(DataError) as info:
        fidelity_metrics(imgs, imgs, INCEPTION_NAME, weights_path=None, cache_root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"could not download the Inception weights (tried {INCEPTION_URL}: <urlopen error [Errno 101] Network is unreachable>)"
    )
    assert f"/checkpoints/{INCEPTION_FILE} or set feature_extractor.weights_path=FILE" in msg


# ---------------------------------------------------------------------------- the offline quickstart
@pytest.mark.slow
def test_offline_quickstart_ends_with_one_line(tmp_path: Path) -> None:
    """``ddpm-train experiment=quickstart`` on an empty data root without a network: one line, exit 2.

    The network is cut by a proxy that refuses every connection (urllib honours ``*_proxy``), so
    the test behaves the same on machines with and without internet access.
    """
    empty = tmp_path / "data"
    empty.mkdir()
    offline = {k: "http://127.0.0.1:9" for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
    env = {**os.environ, **offline, "DDPM_DATA_DIR": str(empty), "OMP_NUM_THREADS": "1"}
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    exe = Path(sys.executable).parent / "ddpm-train"
    proc = subprocess.run(
        [str(exe), "experiment=quickstart", f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download MNIST (tried https://"), proc.stderr
    assert f"into {empty / 'MNIST' / 'raw'}/" in lines[0]
    assert "Traceback" not in proc.stdout
