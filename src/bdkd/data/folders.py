"""Image-folder datasets: TinyImageNet (loaded into memory), ImageNet (streamed) and any
folder of images (``image_folder``: in memory when it fits, streamed beyond).

TinyImageNet layout (as distributed): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` with ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>...``). Its
official val part is our test split; our val is carved from train.

ImageNet layout (the usual preprocessed one): ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG``. Images are decoded on the fly, resized (shorter side) and
centre-cropped to ``image_size`` uint8 tensors; the official val part is our test split.

``image_folder`` layout: ``DIR/train/<class>/*`` and ``DIR/test/<class>/*``, optionally
``DIR/val/<class>/*`` (then the validation split instead of one carved from train); PNG,
JPEG or BMP of any size, each resized (shorter side to ``image_size``, bilinear) and
centre-cropped to ``image_size`` x ``image_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bdkd.data.base import ArraySplit, DataError, DatasetInfo, missing_directory, register_dataset

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _eight_bit(img: Any, path: Path) -> Any:
    """A 16-bit (or 32-bit integer) grey image scaled to 8 bits by value (Pillow's own
    conversion would clip every value above 255 to 255); other images as they are."""
    from PIL import Image

    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    values = np.asarray(img, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"{path}: pixel values outside [0, 65535] ({img.mode} image)")
    return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), "L")


def read_image(
    path: Path, size: int | None = None, resize: int | None = None, mode: str = "RGB"
) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) for ``mode="RGB"`` or (H, W, 1) for ``"L"``
    (16-bit grey images scaled to 8 bits by value); optionally resize the shorter side to
    ``resize`` and centre-crop ``size`` x ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = _eight_bit(img, path).convert(mode)
            if resize is not None:
                w, h = img.size
                scale = resize / min(w, h)
                img = img.resize(
                    (max(size or 1, round(w * scale)), max(size or 1, round(h * scale))),
                    Image.BILINEAR,
                )
            if size is not None:
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            array = np.array(img, dtype=np.uint8)
            return array[:, :, None] if array.ndim == 2 else array
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def stack_images(paths: list[Path], size: int, mode: str = "RGB") -> Tensor:
    """The images at ``paths`` as uint8 (N, C, size, size): resized (shorter side) and
    centre-cropped where they are not that size; ``mode`` RGB (3 channels) or L (1)."""
    channels = 1 if mode == "L" else 3
    out = torch.empty(len(paths), channels, size, size, dtype=torch.uint8)
    for i, p in enumerate(paths):
        a = read_image(p, mode=mode)
        if a.shape[:2] != (size, size):
            a = read_image(p, size=size, resize=size, mode=mode)
        out[i] = torch.from_numpy(a).permute(2, 0, 1)
    return out


TINY_HOW = "obtain tiny-imagenet-200 by hand, extract it and pass data.root"


@register_dataset("tinyimagenet", how_to_get=TINY_HOW)
def load_tinyimagenet(root: Path | None = None) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """TinyImageNet-200 (64x64, 200 classes) into memory."""
    if root is None:
        raise DataError("tinyimagenet: set data.root to the tiny-imagenet-200 directory")
    root = Path(root)
    wnids_file = root / "wnids.txt"
    annotations = root / "val" / "val_annotations.txt"
    if not (wnids_file.is_file() and (root / "train").is_dir() and annotations.is_file()):
        raise missing_directory(
            "tinyimagenet",
            root,
            "wnids.txt, train/<wnid>/images/, val/images/ and val/val_annotations.txt",
            TINY_HOW,
        )
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        folder = root / "train" / w / "images"
        if not folder.is_dir():
            raise DataError(f"tinyimagenet: missing {folder}")
        files = _images(folder)
        train_paths += files
        train_labels += [index[w]] * len(files)
    test_paths, test_labels = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise DataError(f"{annotations}:{line_no}: class {fields[1]!r} is not in wnids.txt")
        test_paths.append(root / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    train = ArraySplit(stack_images(train_paths, 64), torch.tensor(train_labels))
    test = ArraySplit(stack_images(test_paths, 64), torch.tensor(test_labels))
    info = DatasetInfo(
        "tinyimagenet",
        len(wnids),
        3,
        64,
        (0.4802, 0.4481, 0.3975),
        (0.2770, 0.2691, 0.2821),
        8,
        True,
        wnids,
    )
    return train, test, info


class ImageFolderSplit(Dataset):
    """A split of an image-folder tree decoded on the fly to uint8 (C, size, size)."""

    def __init__(
        self, paths: list[Path], labels: list[int], size: int, resize: int, mode: str = "RGB"
    ) -> None:
        self.paths, self.size, self.resize, self.mode = paths, size, resize, mode
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = read_image(self.paths[i], size=self.size, resize=self.resize, mode=self.mode)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), self.labels[i]

    def subset(self, index: Tensor) -> ImageFolderSplit:
        chosen = index.tolist()
        return ImageFolderSplit(
            [self.paths[i] for i in chosen],
            [int(self.labels[i]) for i in chosen],
            self.size,
            self.resize,
            self.mode,
        )


IMAGENET_HOW = "obtain ImageNet-1k by hand and arrange it as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, then pass data.root"


def scan_image_folder(
    root: Path, classes: list[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Image paths and labels of a ``<class>/<image>`` tree (classes sorted by name)."""
    if classes is None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for i, c in enumerate(classes):
        folder = root / c
        if not folder.is_dir():
            raise DataError(f"{root}: missing class folder {c!r}")
        files = _images(folder)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise DataError(f"{root}: no images found under its class folders")
    return paths, labels, classes


def load_imagenet_folders(
    root: Path, *, image_size: int = 224, resize: int = 256
) -> tuple[ImageFolderSplit, ImageFolderSplit, DatasetInfo]:
    """ImageNet's train and val folders as streamed splits."""
    root = Path(root)
    if not ((root / "train").is_dir() and (root / "val").is_dir()):
        raise missing_directory(
            "imagenet", root, "train/<wnid>/ and val/<wnid>/ folders", IMAGENET_HOW
        )
    train_paths, train_labels, classes = scan_image_folder(root / "train")
    test_paths, test_labels, _ = scan_image_folder(root / "val", classes)
    info = DatasetInfo(
        "imagenet",
        len(classes),
        3,
        image_size,
        IMAGENET_MEAN,
        IMAGENET_STD,
        0,
        True,
        classes,
        random_resized_crop=True,
    )
    return (
        ImageFolderSplit(train_paths, train_labels, image_size, resize),
        ImageFolderSplit(test_paths, test_labels, image_size, resize),
        info,
    )


@register_dataset("imagenet", how_to_get=IMAGENET_HOW)
def load_imagenet(
    root: Path | None = None, *, image_size: int = 224, resize: int = 256
) -> tuple[ImageFolderSplit, ImageFolderSplit, DatasetInfo]:
    """ImageNet-1k from its folder tree (streamed, decoded per sample)."""
    if root is None:
        raise DataError("imagenet: set data.root to the directory holding train/ and val/")
    return load_imagenet_folders(root, image_size=image_size, resize=resize)


# --------------------------------------------------------------------------- any folder

FOLDER_HOW = "arrange it as DIR/train/<class>/*.png|jpg and DIR/test/<class>/* and pass data.root"
MIN_RRC_SIZE = 64  # RandomResizedCrop by default from this image side on (else crop + flip)


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) in [0, 1] units."""
    x = images.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def detect_channels(path: Path) -> int:
    """1 for a grey image (its mode), else 3: an image folder's channels when
    ``data.channels`` does not say."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return 1 if img.mode in GREY_MODES else 3
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


@register_dataset("image_folder", how_to_get=FOLDER_HOW)
def load_image_folder(
    root: Path | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    memory_limit_mb: int = 4096,
) -> tuple[ArraySplit | ImageFolderSplit, ...]:
    """A folder of class sub-folders: ``train/``, ``test/`` and optionally ``val/``.

    Images are resized to ``image_size`` (default: the side of the first training image when
    it is square) and held in memory as uint8 when all splits need at most
    ``memory_limit_mb``; beyond, they are decoded batch by batch (streamed). ``channels``: 3
    (RGB) or 1 (grey); by default the first training image's (grey modes give 1). Normalisation statistics are measured on the training
    images (all of them in memory; the first 2,000 when streamed).
    """
    if root is None:
        raise DataError("image_folder: set data.root to the directory holding train/ and test/")
    root = Path(root)
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        raise missing_directory(
            "image_folder", root, "train/<class>/ and test/<class>/", FOLDER_HOW
        )
    train_paths, train_labels, classes = scan_image_folder(root / "train")
    if len(classes) < 2:
        raise DataError(
            f"image_folder: {root / 'train'} holds {len(classes)} class folder(s); need 2+"
        )
    parts = {"train": (train_paths, train_labels)}
    for name in ("val", "test"):
        folder = root / name
        if name == "val" and not folder.is_dir():
            continue
        extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in classes)
        if extra:
            raise DataError(f"image_folder: {folder} has classes not in train/: {extra}")
        present = [c for c in classes if (folder / c).is_dir()]
        paths, labels, _ = scan_image_folder(folder, present)
        index = {c: i for i, c in enumerate(classes)}
        parts[name] = (paths, [index[present[j]] for j in labels])
    if channels is None:
        channels = detect_channels(train_paths[0])
    mode = "L" if channels == 1 else "RGB"
    if image_size is None:
        first = read_image(train_paths[0], mode=mode)
        if first.shape[0] != first.shape[1]:
            raise DataError(
                f"image_folder: {train_paths[0]} is {first.shape[1]}x{first.shape[0]}; set "
                "data.image_size (images are resized and centre-cropped to a square)"
            )
        image_size = int(first.shape[0])
    c = 1 if mode == "L" else 3
    total = sum(len(p) for p, _ in parts.values()) * c * image_size**2
    in_memory = total <= memory_limit_mb * 2**20
    splits: dict[str, ArraySplit | ImageFolderSplit] = {}
    for name, (paths, labels) in parts.items():
        if in_memory:
            splits[name] = ArraySplit(stack_images(paths, image_size, mode), torch.tensor(labels))
        else:
            splits[name] = ImageFolderSplit(paths, labels, image_size, image_size, mode)
    train = splits["train"]
    if in_memory:
        mean, std = _channel_stats(train.images)
    else:
        sample = stack_images(train_paths[:2000], image_size, mode)
        mean, std = _channel_stats(sample)
    info = DatasetInfo(
        "image_folder",
        len(classes),
        c,
        image_size,
        mean,
        std,
        crop_padding=0 if image_size >= MIN_RRC_SIZE else max(1, image_size // 8),
        flip=True,
        class_names=classes,
        random_resized_crop=image_size >= MIN_RRC_SIZE,
    )
    return train, splits.get("val"), splits["test"], info
