"""Write scikit-learn's digits as a folder of PNG images, the layout of your own data.

    python examples/digits_folder.py runs/digits-folder

``DIR/train/<digit>/*.png`` (1,437 images) and ``DIR/test/<digit>/*.png`` (360): 8x8 grey
images, values 0-16 scaled to 0-255, split with a fixed seed. docs/tune.md tunes methods on
this folder as a stand-in for a user's own (``data: {dataset: image_folder, root: DIR}``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_folder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    for split, idx in (("test", order[:n_test]), ("train", order[n_test:])):
        for i in idx:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
    return root


if __name__ == "__main__":
    out = write_folder(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits-folder"))
    print(f"wrote {out}/train and {out}/test")
