"""Save logits of a deliberately over-confident classifier on real data (scikit-learn digits).

An MLP trained for many epochs on 300 of the 1,797 digits images memorises its training set
and becomes over-confident on the rest. Writes validation and test logits to one .npz that
`bdkd calibrate` reads (the temperature is fitted on the validation part only):

    python examples/digits_logits.py digits_logits.npz
    bdkd calibrate digits_logits.npz --diagram docs/figures/calibration_digits.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the .npz file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    train, val, test = order[:300], order[300:800], order[800:]
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        for batch in train[torch.randperm(len(train))].split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    with torch.no_grad():
        np.savez(
            args.out,
            logits=model(x[test]).numpy(),
            labels=y[test].numpy(),
            val_logits=model(x[val]).numpy(),
            val_labels=y[val].numpy(),
        )
    print(f"wrote {args.out}: {len(val)} validation and {len(test)} test samples")


if __name__ == "__main__":
    main()
