"""On a CUDA device the same code gives the CPU's numbers. Skipped where there is none (CI has
none); on a GPU machine: ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bdkd.calibration import CalibrationAccumulator, SegmentationAccumulator, binned_sums
from bdkd.cli import main
from bdkd.llm.metrics import TokenMetrics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _close(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def _logits(n: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


def test_binned_sums_of_cuda_values_equal_the_cpu_sums():
    values = torch.rand(1000, dtype=torch.float64)
    hits = torch.rand(1000) < values
    torch.testing.assert_close(
        binned_sums(values.cuda(), hits.cuda(), 15), binned_sums(values, hits, 15)
    )


def test_calibration_accumulator_on_cuda_equals_cpu():
    logits, labels = _logits(300, 10)
    cpu, gpu = CalibrationAccumulator(10), CalibrationAccumulator(10)
    for part in (slice(0, 150), slice(150, 300)):
        cpu.update(logits[part], labels[part])
        gpu.update(logits[part].cuda(), labels[part].cuda())
    _close(cpu.compute(), gpu.compute())


def test_segmentation_accumulator_on_cuda_equals_cpu():
    flat, flat_labels = _logits(500, 5, seed=1)
    logits = flat.reshape(2, 10, 25, 5).permute(0, 3, 1, 2)
    labels = flat_labels.reshape(2, 10, 25)
    cpu = SegmentationAccumulator(5, temperature=1.5)
    gpu = SegmentationAccumulator(5, temperature=1.5)
    cpu.update(logits, labels)
    gpu.update(logits.cuda(), labels.cuda())
    _close(cpu.compute(), gpu.compute())


def test_token_metrics_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 7, 50, generator=g) * 2
    teacher = torch.randn(2, 7, 50, generator=g) * 2
    labels = torch.randint(0, 50, (2, 7), generator=g)
    mask = torch.rand(2, 7, generator=g) < 0.8
    cpu, gpu = TokenMetrics(), TokenMetrics()
    cpu.update(student, labels, mask, teacher)
    gpu.update(student.cuda(), labels.cuda(), mask.cuda(), teacher.cuda())
    _close(cpu.compute(), gpu.compute())


def test_image_distillation_trains_and_evaluates_on_cuda(tmp_path):
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "bdkd.yaml"
    run = tmp_path / "run"
    args = ["train", str(config), "train.epochs=1", "train.device=cuda", "--out", str(run)]
    assert main(args) == 0
    text = (run / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text


def _llm_run(tiny_lms, tmp_path, name: str, train: str) -> tuple[dict, dict]:
    """An llm-distill run on CUDA; (summary, first metrics line). Plain-text paragraphs: the
    jsonl reader needs the datasets package, which a GPU image may lack."""
    text = tmp_path / "text.txt"
    text.write_text(
        "\n\n".join(f"Paragraph {i} says that {i} and {i} make {2 * i}." for i in range(40))
    )
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"""teacher: {{model: {tiny_lms["teacher"]}}}
student: {{model: {tiny_lms["student"]}}}
data: {{files: [{text}], format: paragraphs, max_length: 32, prompt_tokens: 4, val_size: 4, test_size: 4}}
objective: {{name: bdkd, temperature: 1.0}}
train: {{steps: 4, micro_batch: 2, lr: 0.003, eval_every: 2, eval_batch: 4, max_new_tokens: 6, device: cuda, progress: false, {train}}}
"""
    )
    run = tmp_path / name
    assert main(["llm-distill", str(config), "--out", str(run)]) == 0
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return json.loads((run / "summary.json").read_text()), first


def test_llm_distillation_trains_and_evaluates_on_cuda(tiny_lms, tmp_path):
    summary, first = _llm_run(tiny_lms, tmp_path, "fp32", "precision: fp32")
    assert not summary["device"].startswith("cpu")
    for value in summary["results"]["student"].values():
        assert math.isfinite(value)
    # bf16 autocast with gradient checkpointing: the same run within bf16's rounding
    low, low_first = _llm_run(
        tiny_lms, tmp_path, "bf16", "precision: bf16, gradient_checkpointing: true"
    )
    for value in low["results"]["student"].values():
        assert math.isfinite(value)
    assert low_first["train"]["bdkd"] == pytest.approx(first["train"]["bdkd"], rel=0.05)
    assert low["results"]["student"]["nll"] == pytest.approx(
        summary["results"]["student"]["nll"], rel=0.05
    )
