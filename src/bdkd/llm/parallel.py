"""Parallel LLM distillation: DDP, or FSDP2 sharding of student and teacher.

:class:`Parallel` is this process's place in the group (world 1 without one);
:func:`setup_parallel` wraps the models; :func:`full_state` / :func:`full_optimizer_state`
gather a whole state for a checkpoint and :func:`load_full_state` scatters one back. Process
groups come from torchrun (:mod:`bdkd.engine.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bdkd.config import ConfigError
from bdkd.engine.checkpoint import load_network_state
from bdkd.llm.config import LLMConfig
from bdkd.llm.distill import CausalLMDistiller

__all__ = [
    "Parallel",
    "check_parallel",
    "full_optimizer_state",
    "full_state",
    "load_full_state",
    "setup_parallel",
]


@dataclass
class Parallel:
    """This process's place in a process group (world 1 without one)."""

    rank: int = 0
    world: int = 1
    fsdp: bool = False

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank :: self.world]

    @property
    def main(self) -> bool:
        return self.rank == 0


def check_parallel(cfg: LLMConfig, info: Any) -> None:
    """What a process group of ``info.world_size`` needs of the config (before any model
    loads): micro-batches that divide among the processes, no LoRA under FSDP."""
    if not info.enabled:
        return
    tc = cfg.train
    if tc.micro_batch % info.world_size:
        raise ConfigError(
            f"config key 'train.micro_batch': {tc.micro_batch} texts must divide evenly among "
            f"{info.world_size} processes"
        )
    if tc.parallel == "fsdp" and cfg.student.lora:
        raise ConfigError(
            "config key 'student.lora': LoRA students train with train.parallel: ddp "
            "(their adapters are small; FSDP shards full students and teachers)"
        )


def setup_parallel(
    cfg: LLMConfig, distiller: CausalLMDistiller, device: torch.device, info: Any
) -> tuple[Parallel, Any]:
    """Wrap the models for the process group ``info`` (a
    :class:`bdkd.engine.distributed.DistInfo`): DDP around the distiller, or FSDP2 sharding of
    every decoder layer and the root of student and teacher (so a teacher larger than one
    device fits). Returns (parallel, the module a step calls)."""
    if not info.enabled:
        return Parallel(), distiller
    tc = cfg.train
    if tc.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None
        )
        return Parallel(info.rank, info.world_size, fsdp=False), wrapped
    from torch.distributed.fsdp import fully_shard

    from bdkd.llm.distill import decoder_and_head

    for model in (distiller.student, distiller.teacher):
        if model is None:
            continue
        decoder, _ = decoder_and_head(model)
        for layer in getattr(decoder, "layers", []):
            fully_shard(layer)
        fully_shard(model)
    distiller.sharded = True
    return Parallel(info.rank, info.world_size, fsdp=True), distiller


def full_state(model: Any, parallel: Parallel) -> dict[str, Any]:
    """The model's whole state dict on CPU (gathered from the shards under FSDP)."""
    if not parallel.fsdp:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def full_optimizer_state(model: Any, optimizer: Any, parallel: Parallel) -> dict[str, Any]:
    if not parallel.fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state(
    model: Any, optimizer: Any, state: dict[str, Any], parallel: Parallel, where: str
) -> None:
    """Load a whole (gathered) state into possibly sharded model and optimizer."""
    if not parallel.fsdp:
        load_network_state(model, state["networks"]["student"], where)
        optimizer.load_state_dict(state["optimizers"]["student"])
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # a forward leaves the root gathered: shard it again
        if isinstance(module, FSDPModule):
            module.reshard()

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state["networks"]["student"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizers"]["student"], options=options)
