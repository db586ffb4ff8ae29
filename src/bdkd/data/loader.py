"""Batches from in-memory uint8 tensors, without per-sample Python."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from bdkd.data.augment import epoch_generator
from bdkd.data.base import ArraySplit, DataError


class InMemoryLoader:
    """Iterates (images uint8, labels) batches of a split held in memory (and each sample's
    index in the split with ``with_index=True``).

    The split is moved to ``device`` once; each epoch's order is a permutation drawn from
    ``seed`` and the epoch number, so any epoch can be replayed exactly (resume).
    """

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        with_index: bool = False,
        pad: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = (
            batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.rank, self.world_size, self.with_index, self.pad = rank, world_size, with_index, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration uses."""
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = self.labels.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1 and not self.pad:  # evaluation: every sample exactly once
            order = order[self.rank :: self.world_size]
        elif self.world_size > 1:
            per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
            total = per_rank * self.world_size
            if total > n:  # pad by wrapping around so every rank gets the same count
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank : total : self.world_size]
        return order.to(self.labels.device)

    def __len__(self) -> int:
        n = len(self._indices()) if self.world_size > 1 else self.labels.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = self._indices()
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.with_index:
                yield self.images[idx], self.labels[idx], idx
            else:
                yield self.images[idx], self.labels[idx]


def _clean_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches`` with a DataError raised in a worker process re-raised as one line: the
    worker's own message (a DataLoader wraps it in the worker's whole traceback)."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except DataError as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            last = lines[-1] if lines else "a streamed sample could not be read"
            raise DataError(last.split("DataError: ", 1)[-1]) from None
        yield batch


class StreamedLoader:
    """Batches of a streamed split (decoded per sample by a ``DataLoader``) with
    :class:`InMemoryLoader`'s interface: the same per-epoch order from (seed, epoch), the
    same sharding over processes, each sample's index when asked."""

    def __init__(
        self,
        dataset: object,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        device: torch.device,
        rank: int,
        world_size: int,
        with_index: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.device, self.rank, self.world_size, self.epoch = device, rank, world_size, 0
        self.with_index = with_index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _sampler(self) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        return -(-len(self._sampler()) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        from torch.utils.data import DataLoader

        sampler = self._sampler()
        workers = min(4, torch.get_num_threads())
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=sampler, num_workers=workers
        )
        for i, (images, labels) in enumerate(_clean_errors(loader)):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.with_index:
                index = torch.tensor(sampler[i * self.batch_size : (i + 1) * self.batch_size])
                yield images, labels, index.to(self.device)
            else:
                yield images, labels
