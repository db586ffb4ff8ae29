"""What a CIFAR-100 recipe and an LLM distillation cost on one GPU: one script, under 10 minutes.

    python benchmarks/gpu.py             # on a CUDA machine; writes benchmarks/results/gpu.md
    python benchmarks/gpu.py --dry-run   # anywhere (CPU, tiny sizes): checks the script runs

1. Images: BD-KD (online: both networks train) resnet32x4 -> resnet8x4 on CIFAR-100-shaped
   data (50,000 synthetic uint8 images in memory, the real loop: bdkd's Trainer with crop +
   flip on the device), bf16 autocast, channels-last and torch.compile; images/s over a
   timed epoch after a warm-up epoch (which compiles), the model FLOPs per image counted by
   torch's FlopCounterMode on one eager step, model-FLOPs utilisation against the device's
   dense bf16 peak, and the projected 240-epoch wall-clock (goal: under 15 minutes on one
   H100-class GPU).
2. Tokens: a SmolLM2-135M-shaped teacher (30 layers, width 576, vocabulary 49,152, random
   weights: throughput does not depend on them) and a 10-layer student, forward KL through
   bdkd's fused LM-head path with FSDP2 sharding on one device (a one-process group), bf16;
   tokens/s over timed steps after warm-up and MFU with 6 N per trained token plus 2 N per
   teacher token (goal: MFU >= 35 %).

Nothing is downloaded. ``make test`` runs ``--dry-run`` (tests/test_benchmark_gpu.py), so the
script cannot rot between the times a GPU is at hand.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bdkd.config import validate  # noqa: E402
from bdkd.data.base import ArraySplit, DatasetInfo, register_dataset  # noqa: E402
from bdkd.engine import Trainer  # noqa: E402

# dense bf16 peak FLOP/s by device name (vendor data sheets; sparsity not counted)
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
SIZES = {
    "full": {"images": 50_000, "batch": 128, "teacher": "resnet32x4", "student": "resnet8x4",
             "tokens_batch": 16, "length": 512, "steps": 12},
    "dry": {"images": 64, "batch": 32, "teacher": "resnet8", "student": "resnet8",
            "tokens_batch": 2, "length": 32, "steps": 2},
}  # fmt: skip


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or "CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAKS.items() if k in name), None)


def synthetic_cifar(n: int) -> None:
    """Register ``synthetic_cifar100``: n CIFAR-100-shaped uint8 images with labels."""

    @register_dataset("synthetic_cifar100", how_to_get="built in memory by benchmarks/gpu.py")
    def load(root: object = None, **_: object) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n + 1000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 100, (n + 1000,), generator=g)
        info = DatasetInfo(
            "synthetic_cifar100", 100, 3, 32, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276),
            crop_padding=4, flip=True,
        )  # fmt: skip
        return ArraySplit(images[:n], labels[:n]), ArraySplit(images[n:], labels[n:]), info


def image_row(device: torch.device, size: dict, work: Path) -> dict:
    synthetic_cifar(size["images"])
    cuda = device.type == "cuda"
    cfg = validate(
        {
            "data": {"dataset": "synthetic_cifar100", "val_size": 0, "batch_size": size["batch"]},
            "networks": {
                "teacher": {"model": size["teacher"]},
                "student": {"model": size["student"]},
            },
            "method": {"name": "bdkd"},
            "eval": {"temperature_scaling": False},
            "schedule": {"name": "cosine"},
            "train": {
                "epochs": 2,
                "device": str(device),
                "progress": False,
                "precision": "bf16" if cuda else "fp32",
                "channels_last": cuda,
                "compile": cuda,
            },  # fmt: skip
        }
    )
    trainer = Trainer(cfg, work / "images")
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(size["batch"], 3, 32, 32, device=device)
    y = torch.randint(0, 100, (size["batch"],), device=device)
    with FlopCounterMode(display=False) as counter:
        trainer.distiller(x, y).total().backward()
    flops_per_image = counter.get_total_flops() / x.shape[0]
    trainer.train_epoch(0)  # warm-up: compiles
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train_epoch(1)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    per_second = size["images"] / seconds
    t = cfg.train
    recipe = " + ".join(
        [t.precision, *(["channels-last"] if t.channels_last else []), *(["compile"] if t.compile else [])]
    )  # fmt: skip
    return {
        "label": f"BD-KD {size['teacher']} -> {size['student']}, CIFAR-100 shape, {recipe}",
        "images_per_second": per_second,
        "flops_per_image": flops_per_image,
        "epoch_seconds": seconds,
        "projected_240_minutes": 240 * 50_000 / per_second / 60,
    }


def llama(layers: int, *, dry: bool, seed: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(seed)
    width, heads, kv, inner, vocab = (32, 2, 1, 64, 128) if dry else (576, 9, 3, 1536, 49152)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
        tie_word_embeddings=True,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def token_row(device: torch.device, size: dict, dry: bool) -> dict:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from bdkd.llm.batch import LMBatch
    from bdkd.llm.distill import CausalLMDistiller, accumulate_step, decoder_and_head

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    teacher = llama(2 if dry else 30, dry=dry, seed=1).to(device)
    student = llama(1 if dry else 10, dry=dry, seed=2).to(device)
    distiller = CausalLMDistiller(student, teacher, objective="forward_kl").to(device)
    for model in (student, teacher):
        for layer in decoder_and_head(model)[0].layers:
            fully_shard(layer)
        fully_shard(model)
    distiller.sharded = True
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    b, t = size["tokens_batch"], size["length"]
    vocab = student.config.vocab_size
    ids = torch.randint(0, vocab, (b, t), device=device)
    ones = torch.ones_like(ids)
    batch = LMBatch(ids, ones, ones)
    bf16 = device.type == "cuda"

    def autocast() -> object:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    for _ in range(2):  # warm-up
        accumulate_step(distiller, [batch], optimizer, autocast=autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(size["steps"]):
        accumulate_step(distiller, [batch], optimizer, autocast=autocast)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = size["steps"] * b * (t - 1)
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    shape = "tiny" if dry else "SmolLM2-135M-shaped"
    return {
        "label": f"forward KL, {shape} teacher -> {len(decoder_and_head(student)[0].layers)}-layer "
        f"student, FSDP2 on one device, {'bf16' if bf16 else 'fp32'}",
        "tokens_per_second": tokens / seconds,
        "flops_per_token": 6 * n_student + 2 * n_teacher,
        "student_parameters": n_student,
        "teacher_parameters": n_teacher,
    }


def report(device: torch.device, name: str, peak: float | None, img: dict, tok: dict) -> str:
    def mfu(flops_per_second: float) -> str:
        return "peak unknown" if peak is None else f"{100 * flops_per_second / peak:.1f} %"

    img_mfu = mfu(img["images_per_second"] * img["flops_per_image"])
    tok_mfu = mfu(tok["tokens_per_second"] * tok["flops_per_token"])
    return "\n".join(
        [
            "# GPU: what a CIFAR-100 recipe and an LLM distillation cost",
            "",
            f"`python benchmarks/gpu.py` on {name} ({device}), torch {torch.__version__}.",
            "Model FLOPs utilisation (MFU) is against the device's dense bf16 peak"
            + ("" if peak is None else f" ({peak / 1e12:.0f} TFLOP/s)")
            + ".",
            "",
            "| workload | throughput | model FLOPs | MFU | projection |",
            "|---|---|---|---|---|",
            f"| {img['label']} | {img['images_per_second']:,.0f} images/s | {img['flops_per_image'] / 1e9:.3g} "
            f"GFLOP per image (both networks, forward + backward) | {img_mfu} | 240 epochs of "
            f"50,000 images: {img['projected_240_minutes']:.1f} min (goal < 15) |",
            f"| {tok['label']} | {tok['tokens_per_second']:,.0f} tokens/s | {tok['flops_per_token'] / 1e9:.3g} "
            f"GFLOP per token (6 N student + 2 N teacher) | {tok_mfu} | goal MFU >= 35 % |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on any device")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.md"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("benchmarks/gpu.py: no CUDA device here; --dry-run checks the script")
    size = SIZES["dry" if args.dry_run else "full"]
    name, peak = peak_flops(device)
    with tempfile.TemporaryDirectory() as tmp:
        img = image_row(device, size, Path(tmp))
    tok = token_row(device, size, args.dry_run)
    text = report(device, name, peak, img, tok)
    if args.dry_run:
        text = text.replace("# GPU:", "# GPU (dry run, tiny sizes: no numbers to quote):")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
