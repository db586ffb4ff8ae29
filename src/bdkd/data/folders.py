"""Image-folder datasets: TinyImageNet (loaded into memory) and ImageNet (streamed).

TinyImageNet layout (as distributed): ``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
``val/images/*.JPEG`` with ``val/val_annotations.txt`` (``file<TAB>wnid<TAB>...``). Its
official val part is our test split; our val is carved from train.

ImageNet layout (the usual preprocessed one): ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG``. Images are decoded on the fly, resized (shorter side) and
centre-cropped to ``image_size`` uint8 tensors; the official val part is our test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from bdkd.data.base import ArraySplit, DataError, DatasetInfo, missing_directory, register_dataset

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_image(path: Path, size: int | None = None, resize: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3); optionally resize the shorter side to
    ``resize`` and centre-crop ``size`` x ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
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
            return np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _stack(paths: list[Path], size: int) -> Tensor:
    arrays = []
    for p in paths:
        a = read_image(p)
        if a.shape[:2] != (size, size):
            a = read_image(p, size=size, resize=size)
        arrays.append(a)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


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
    train = ArraySplit(_stack(train_paths, 64), torch.tensor(train_labels))
    test = ArraySplit(_stack(test_paths, 64), torch.tensor(test_labels))
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
    """A split of an image-folder tree decoded on the fly to uint8 (3, size, size)."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, resize: int) -> None:
        self.paths, self.size, self.resize = paths, size, resize
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image = read_image(self.paths[i], size=self.size, resize=self.resize)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), self.labels[i]

    def subset(self, index: Tensor) -> ImageFolderSplit:
        chosen = index.tolist()
        return ImageFolderSplit(
            [self.paths[i] for i in chosen],
            [int(self.labels[i]) for i in chosen],
            self.size,
            self.resize,
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
        "imagenet", len(classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD, 0, True, classes
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
