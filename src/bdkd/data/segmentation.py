"""Semantic segmentation data: label maps, the standard on-disk layouts, paired augmentation.

A segmentation split holds images uint8 (N, C, H, W) and label maps uint8 (N, H, W) with a
class index per pixel and ``ignore_index`` (255) for pixels that count nowhere (void,
borders). Readers (nothing is downloaded; each is tested on small files in its layout):

- ``cityscapes``: ``ROOT/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` and
  ``ROOT/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`` (mapped to the 19 training ids;
  ``*_gtFine_labelTrainIds.png`` is used as it is when present). The official val part is
  the test split.
- ``voc``: Pascal VOC 2012, ``ROOT/JPEGImages/*.jpg``, ``ROOT/SegmentationClass/*.png``
  (palette PNGs of class indices, 255 on borders), ``ROOT/ImageSets/Segmentation/{train,
  val}.txt`` (ROOT may be the ``VOCdevkit`` above ``VOC2012``); 21 classes; val is the test
  split.
- ``ade20k``: ``ROOT/images/{training,validation}/*.jpg`` with
  ``ROOT/annotations/{training,validation}/*.png``; label 0 ("other") is ignored and 1..150
  become 0..149 (``num_classes`` and ``reduce_zero_label`` are options, for other datasets
  in the same layout).
- ``fashion_scenes``: scenes composed deterministically from real Fashion-MNIST images
  (2-4 items, each at a random scale and place on a 64x64 canvas, later items in front); a
  pixel is labelled with its item's class (1-10) where that item's own intensity is above
  ``threshold``, background (0) elsewhere. Train scenes come from the official train part,
  test scenes from the official test part.

Images are resized to ``height`` x ``width`` (bilinear; label maps nearest) and held in
memory when they fit ``memory_limit_mb``, else decoded per sample. Our validation split is
carved from train by the run's seed.

:class:`SegAugment` is the paired augmentation: per sample a scale (log-uniform in the
dataset's range), a crop position and a horizontal flip, drawn from (seed, epoch) and
applied to image and label map together on the device (bilinear and nearest sampling;
pixels brought in from outside the image are ignored).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from bdkd.data.augment import epoch_generator, normalize
from bdkd.data.base import ArraySplit, DataError, DatasetInfo, missing_directory, register_dataset

IGNORE = 255

# --------------------------------------------------------------------------- reading files


def _check_label(
    label: np.ndarray, path: Path, mode: str, num_classes: int, mapping: np.ndarray | None
) -> None:
    """Refuse a label map whose values cannot be class indices: negative, beyond what the
    mapping covers (raw ids), or, without a mapping, neither a class nor the ignore index."""
    if not label.size:
        return
    lo, hi = int(label.min()), int(label.max())
    if mapping is not None:
        ok = lo >= 0 and hi < len(mapping)
        wanted = f"[0, {len(mapping) - 1}] (the dataset's raw label ids)"
    else:
        bad = (label < 0) | ((label >= num_classes) & (label != IGNORE))
        ok = not bool(bad.any())
        wanted = f"[0, {num_classes - 1}] or {IGNORE} (ignored)"
    if not ok:
        raise DataError(
            f"{path}: label values lie in [{lo}, {hi}] ({mode} image), outside {wanted}; a "
            "16-bit or damaged label map would be read as other classes"
        )


def _read_pair(
    image_path: Path,
    label_path: Path,
    height: int,
    width: int,
    mapping: np.ndarray | None,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as img:
            size = img.size
            image = np.array(img.convert("RGB").resize((width, height), Image.BILINEAR), np.uint8)
        with Image.open(label_path) as lab:
            if lab.mode not in ("L", "P", "I", "I;16"):
                raise DataError(
                    f"{label_path}: a label map must be a single-channel PNG, got {lab.mode}"
                )
            if lab.size != size:
                raise DataError(
                    f"{label_path}: the label map is {lab.size[0]}x{lab.size[1]}, its image "
                    f"{image_path.name} {size[0]}x{size[1]}; they must be the same size"
                )
            _check_label(
                np.asarray(lab, dtype=np.int64), label_path, lab.mode, num_classes, mapping
            )
            label = np.array(lab.resize((width, height), Image.NEAREST)).astype(np.int64)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
        raise DataError(f"{image_path} / {label_path}: not a readable image pair ({err})") from None
    if mapping is not None:
        label = mapping[label]
    return image, label.astype(np.uint8)


class SegFolderSplit(Dataset):
    """A segmentation split decoded per sample: ``(image uint8 (3, H, W), labels (H, W))``."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        height: int,
        width: int,
        mapping: np.ndarray | None = None,
        num_classes: int = 256,
    ) -> None:
        self.pairs, self.height, self.width, self.mapping = pairs, height, width, mapping
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label = _read_pair(
            *self.pairs[i], self.height, self.width, self.mapping, self.num_classes
        )
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)

    def subset(self, index: Tensor) -> SegFolderSplit:
        return SegFolderSplit(
            [self.pairs[i] for i in index.tolist()],
            self.height,
            self.width,
            self.mapping,
            self.num_classes,
        )


def _load_pairs(
    pairs: list[tuple[Path, Path]],
    height: int,
    width: int,
    mapping: np.ndarray | None,
    in_memory: bool,
    num_classes: int,
) -> ArraySplit | SegFolderSplit:
    if not pairs:
        raise DataError("no image / label pairs found")
    if not in_memory:
        return SegFolderSplit(pairs, height, width, mapping, num_classes)
    images = torch.empty(len(pairs), 3, height, width, dtype=torch.uint8)
    labels = torch.empty(len(pairs), height, width, dtype=torch.uint8)
    for i, (img, lab) in enumerate(pairs):
        a, b = _read_pair(img, lab, height, width, mapping, num_classes)
        images[i] = torch.from_numpy(a).permute(2, 0, 1)
        labels[i] = torch.from_numpy(b)
    return ArraySplit(images, labels)


def _fits(count: int, height: int, width: int, memory_limit_mb: int) -> bool:
    return count * 4 * height * width <= memory_limit_mb * 2**20


def _info(name: str, classes: list[str], height: int, mean: tuple, std: tuple) -> DatasetInfo:
    return DatasetInfo(
        name,
        len(classes),
        3,
        height,
        mean,
        std,
        crop_padding=0,
        flip=True,
        class_names=classes,
        task="segmentation",
        ignore_index=IGNORE,
    )


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- Cityscapes

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]  # fmt: skip
# labelIds 0..33 -> trainIds (the official table); everything else ignored
_CITY_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                  24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
CITYSCAPES_MAP = np.full(256, IGNORE, dtype=np.int64)
for _label_id, _train_id in _CITY_TRAIN_ID.items():
    CITYSCAPES_MAP[_label_id] = _train_id
CITY_HOW = "download leftImg8bit_trainvaltest and gtFine_trainvaltest by hand, extract them into one directory and pass data.root"


def _cityscapes_pairs(root: Path, part: str) -> tuple[list[tuple[Path, Path]], bool]:
    images = sorted((root / "leftImg8bit" / part).glob("*/*_leftImg8bit.png"))
    pairs, train_ids = [], None
    for img in images:
        stem = img.name[: -len("_leftImg8bit.png")]
        folder = root / "gtFine" / part / img.parent.name
        trainid = folder / f"{stem}_gtFine_labelTrainIds.png"
        labelid = folder / f"{stem}_gtFine_labelIds.png"
        use_train = trainid.is_file()
        if train_ids is None:
            train_ids = use_train
        label = trainid if use_train else labelid
        if not label.is_file():
            raise DataError(f"cityscapes: {img} has no label map {labelid}")
        pairs.append((img, label))
    return pairs, bool(train_ids)


@register_dataset("cityscapes", how_to_get=CITY_HOW)
def load_cityscapes(
    root: Path | None = None, *, height: int = 512, width: int = 1024, memory_limit_mb: int = 4096
) -> tuple[ArraySplit | SegFolderSplit, ArraySplit | SegFolderSplit, DatasetInfo]:
    """Cityscapes fine annotations, 19 classes; the official val part is the test split."""
    if root is None:
        raise DataError(
            "cityscapes: set data.root to the directory holding leftImg8bit/ and gtFine/"
        )
    root = Path(root)
    if not ((root / "leftImg8bit" / "train").is_dir() and (root / "gtFine" / "train").is_dir()):
        raise missing_directory(
            "cityscapes",
            root,
            "leftImg8bit/{train,val}/<city>/ and gtFine/{train,val}/<city>/",
            CITY_HOW,
        )
    splits = []
    for part in ("train", "val"):
        pairs, train_ids = _cityscapes_pairs(root, part)
        mapping = None if train_ids else CITYSCAPES_MAP
        splits.append(
            _load_pairs(
                pairs,
                height,
                width,
                mapping,
                _fits(len(pairs), height, width, memory_limit_mb),
                len(CITYSCAPES_CLASSES),
            )
        )
    info = _info("cityscapes", CITYSCAPES_CLASSES, height, IMAGENET_MEAN, IMAGENET_STD)
    return splits[0], splits[1], info


# --------------------------------------------------------------------------- Pascal VOC

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
VOC_HOW = "download VOCtrainval_11-May-2012.tar by hand, extract it and pass data.root"


@register_dataset("voc", how_to_get=VOC_HOW)
def load_voc(
    root: Path | None = None, *, height: int = 320, width: int = 320, memory_limit_mb: int = 4096
) -> tuple[ArraySplit | SegFolderSplit, ArraySplit | SegFolderSplit, DatasetInfo]:
    """Pascal VOC 2012 segmentation, 21 classes (border pixels ignored); val is the test split."""
    if root is None:
        raise DataError("voc: set data.root to VOC2012 (or the VOCdevkit above it)")
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            root = candidate
            break
    else:
        raise missing_directory(
            "voc", root, "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/", VOC_HOW
        )
    splits = []
    for part in ("train", "val"):
        names_file = root / "ImageSets" / "Segmentation" / f"{part}.txt"
        if not names_file.is_file():
            raise DataError(f"voc: missing {names_file}")
        names = [n.strip() for n in names_file.read_text().split() if n.strip()]
        pairs = [
            (root / "JPEGImages" / f"{n}.jpg", root / "SegmentationClass" / f"{n}.png")
            for n in names
        ]
        for img, lab in pairs:
            if not (img.is_file() and lab.is_file()):
                raise DataError(
                    f"voc: {names_file} lists {img.stem}, but {img} or {lab} is missing"
                )
        splits.append(
            _load_pairs(
                pairs,
                height,
                width,
                None,
                _fits(len(pairs), height, width, memory_limit_mb),
                len(VOC_CLASSES),
            )
        )
    info = _info("voc", VOC_CLASSES, height, IMAGENET_MEAN, IMAGENET_STD)
    return splits[0], splits[1], info


# --------------------------------------------------------------------------- ADE20K

ADE_HOW = "download ADEChallengeData2016.zip by hand, extract it and pass data.root"


@register_dataset("ade20k", how_to_get=ADE_HOW)
def load_ade20k(
    root: Path | None = None,
    *,
    height: int = 256,
    width: int = 256,
    num_classes: int = 150,
    reduce_zero_label: bool = True,
    memory_limit_mb: int = 4096,
) -> tuple[ArraySplit | SegFolderSplit, ArraySplit | SegFolderSplit, DatasetInfo]:
    """ADE20K-style image and label folders; with ``reduce_zero_label`` label 0 is ignored
    and 1..N become 0..N-1. The validation folder is the test split."""
    if root is None:
        raise DataError("ade20k: set data.root to the directory holding images/ and annotations/")
    root = Path(root)
    if not (
        (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir()
    ):
        raise missing_directory(
            "ade20k",
            root,
            "images/{training,validation}/ and annotations/{training,validation}/",
            ADE_HOW,
        )
    mapping = np.arange(256, dtype=np.int64)
    if reduce_zero_label:
        mapping = np.where(mapping == 0, IGNORE, mapping - 1)
        mapping[IGNORE] = IGNORE
    mapping[num_classes + (1 if reduce_zero_label else 0) : IGNORE] = IGNORE
    splits = []
    for part in ("training", "validation"):
        images = sorted(
            p
            for p in (root / "images" / part).iterdir()
            if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        pairs = []
        for img in images:
            lab = root / "annotations" / part / f"{img.stem}.png"
            if not lab.is_file():
                raise DataError(f"ade20k: {img} has no label map {lab}")
            pairs.append((img, lab))
        splits.append(
            _load_pairs(
                pairs,
                height,
                width,
                mapping,
                _fits(len(pairs), height, width, memory_limit_mb),
                num_classes,
            )
        )
    classes = [f"class_{i}" for i in range(num_classes)]
    info = _info("ade20k", classes, height, IMAGENET_MEAN, IMAGENET_STD)
    return splits[0], splits[1], info


# --------------------------------------------------------------------------- Fashion-MNIST scenes


def compose_scenes(
    images: Tensor,
    labels: Tensor,
    count: int,
    *,
    size: int = 64,
    items: tuple[int, int] = (2, 4),
    scale: tuple[float, float] = (0.8, 1.6),
    threshold: int = 30,
    seed: int = 0,
) -> ArraySplit:
    """``count`` scenes of ``items`` (inclusive range) objects drawn from ``images`` (N, 1,
    28, 28) with classes ``labels``; deterministic for a given ``seed``. Label 0 is the
    background, an item of class k is k + 1."""
    g = torch.Generator().manual_seed(seed)
    canvas = torch.zeros(count, 1, size, size, dtype=torch.uint8)
    maps = torch.zeros(count, size, size, dtype=torch.uint8)
    side = images.shape[-1]
    for s in range(count):
        k = int(torch.randint(items[0], items[1] + 1, (1,), generator=g))
        for _ in range(k):
            i = int(torch.randint(0, images.shape[0], (1,), generator=g))
            f = float(torch.empty(1).uniform_(*scale, generator=g))
            n = max(8, min(size, round(side * f)))
            item = F.interpolate(
                images[i : i + 1].float(), size=(n, n), mode="bilinear", align_corners=False
            )
            item = item[0, 0].round().clamp(0, 255).to(torch.uint8)
            top = int(torch.randint(0, size - n + 1, (1,), generator=g))
            left = int(torch.randint(0, size - n + 1, (1,), generator=g))
            on = item > threshold
            region = canvas[s, 0, top : top + n, left : left + n]
            region[on] = item[on]
            maps[s, top : top + n, left : left + n][on] = int(labels[i]) + 1
    return ArraySplit(canvas, maps)


@functools.lru_cache(maxsize=4)
def _scenes(
    train_scenes: int, test_scenes: int, size: int, root: str | None
) -> tuple[ArraySplit, ArraySplit]:
    from bdkd.data.sources import load_fashion_mnist

    train, test, _ = load_fashion_mnist(None if root is None else Path(root))
    return (
        compose_scenes(train.images, train.labels, train_scenes, size=size, seed=0),
        compose_scenes(test.images, test.labels, test_scenes, size=size, seed=1),
    )


@register_dataset(
    "fashion_scenes",
    default_root="/usr/share/datasets/fashion-mnist",
    how_to_get="it is built from Fashion-MNIST: apt-get install dataset-fashion-mnist",
)
def load_fashion_scenes(
    root: Path | None = None, *, train_scenes: int = 6000, test_scenes: int = 2000, size: int = 64
) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    """Scenes of 2-4 real Fashion-MNIST items on a ``size`` x ``size`` canvas; 11 classes."""
    from bdkd.data.sources import FASHION_CLASSES

    if not (1 <= train_scenes <= 200_000 and 1 <= test_scenes <= 200_000 and 32 <= size <= 512):
        raise DataError(
            "fashion_scenes: train_scenes, test_scenes in [1, 200000] and size in [32, 512]"
        )
    train, test = _scenes(train_scenes, test_scenes, size, None if root is None else str(root))
    info = DatasetInfo(
        "fashion_scenes",
        11,
        1,
        size,
        (0.0990,),
        (0.2470,),
        flip=True,
        class_names=["background", *FASHION_CLASSES],
        task="segmentation",
        ignore_index=IGNORE,
        scale_range=(0.75, 1.25),
    )
    return train, test, info


# --------------------------------------------------------------------------- paired augmentation


class SegAugment:
    """Paired augmentation of images and label maps (training), then normalisation.

    Per sample: a scale ``s`` log-uniform in ``scale_range``, a crop position uniform where
    the scaled image covers the output (or centred when it is smaller), a horizontal flip
    with probability 1/2 (``flip``) — one affine map per sample, applied with ``grid_sample``
    (bilinear for the image, nearest for the labels). Pixels the map brings in from outside
    the image are zero in the image and ignored in the labels.
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        flip: bool = True,
        scale_range: tuple[float, float] = (0.5, 2.0),
        ignore_index: int = IGNORE,
        enabled: bool = True,
    ) -> None:
        self.mean, self.std, self.flip = mean, std, flip
        self.scale_range, self.ignore_index, self.enabled = scale_range, ignore_index, enabled
        self.resized_crop, self.crop_padding = False, 0  # what the logit cache's key reads

    def epoch_params(
        self, n: int, seed: int, epoch: int, device: str | torch.device = "cpu"
    ) -> dict[str, Tensor]:
        """Every sample's (scale, crop position, flip) of an epoch, drawn from (seed, epoch)."""
        g = epoch_generator(seed, epoch)
        lo, hi = (math.log(v) for v in self.scale_range)
        scale = torch.empty(n).uniform_(lo, hi, generator=g).exp()
        position = torch.rand(2, n, generator=g)
        flips = (torch.rand(n, generator=g) < 0.5) & self.flip
        return {
            "scale": scale.to(device),
            "position": position.to(device),
            "flips": flips.to(device),
        }

    def _theta(self, scale: Tensor, position: Tensor, flips: Tensor) -> Tensor:
        """Affine maps from output to input coordinates in [-1, 1]: a zoom by ``scale``
        around a centre chosen by ``position``, mirrored where ``flips``."""
        n = scale.shape[0]
        zoom = 1.0 / scale  # the output sees 1/scale of the input's extent
        room = (1.0 - zoom).abs()  # how far the centre can move (either way)
        centre = (position * 2 - 1) * room
        theta = torch.zeros(n, 2, 3, device=scale.device)
        theta[:, 0, 0] = torch.where(flips, -zoom, zoom)
        theta[:, 1, 1] = zoom
        theta[:, 0, 2] = centre[0]
        theta[:, 1, 2] = centre[1]
        return theta

    def apply_pair(
        self, images: Tensor, labels: Tensor, params: dict[str, Tensor], index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Augment a training batch of samples ``index``; returns (normalised images, long
        label maps)."""
        labels = labels.long()
        if not self.enabled:
            return normalize(images, self.mean, self.std), labels
        theta = self._theta(
            params["scale"][index], params["position"][:, index], params["flips"][index]
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        x = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        y = F.grid_sample(
            labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        inside = F.grid_sample(
            torch.ones_like(labels[:, None], dtype=torch.float32),
            grid,
            mode="nearest",
            align_corners=False,
        )
        y = torch.where(inside > 0.5, y, float(self.ignore_index))[:, 0].round().long()
        return normalize(x, self.mean, self.std), y

    def __call__(
        self, images: Tensor, *, train: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Evaluation: normalisation only."""
        return normalize(images, self.mean, self.std)
