"""LLM distillation with Hugging Face models: directories in, a save_pretrained student out,
llm-eval, data formats and masks, the Trainer and TRL integrations, LoRA, EOS masking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

from bdkd.cli import main  # noqa: E402


def _contract_config(tmp_path, tiny_lms, qa_jsonl, objective="forward_kl", **extra):
    cfg = tmp_path / "minimal.yaml"
    lines = [
        f"teacher: {{model: {tiny_lms['teacher']}}}",
        f"student: {{model: {tiny_lms['student']}}}",
        f"data: {{files: [{qa_jsonl}]}}",
        f"objective: {{name: {objective}}}",
        "train: {steps: 3}",
    ]
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def test_two_directories_and_a_jsonl_give_a_student_that_loads_and_generates(
    tiny_lms, qa_jsonl, tmp_path, capsys
):
    cfg = _contract_config(tmp_path, tiny_lms, qa_jsonl)
    run = tmp_path / "run"
    assert main(["llm-distill", str(cfg), "--out", str(run)]) == 0
    assert "the student is in" in capsys.readouterr().out
    student = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(run / "student"))
    assert (run / "student" / "model.safetensors").is_file()
    ids = tokenizer("What is 3 plus 3?", return_tensors="pt").input_ids
    out = student.generate(
        ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    assert out.shape[1] > ids.shape[1]
    # the exported student is the trained one, its head divided by the fitted temperature
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["networks"]["student"]
    t = json.loads((run / "summary.json").read_text())["calibration"]["student"]["temperature"]
    for key, value in student.state_dict().items():
        expected = state[key] / t if key == "lm_head.weight" else state[key]
        torch.testing.assert_close(value, expected)
    # and llm-eval reports on it
    report = tmp_path / "eval"
    args = ["llm-eval", str(run / "student"), "--data", str(qa_jsonl), "--out", str(report)]
    assert main([*args, "--teacher", str(tiny_lms["teacher"])]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["perplexity"] > 1 and 0 <= summary["ece"] <= 1
    assert "teacher_top1_agreement" in summary["results"]["model"]
    assert "| model |" in (report / "report.md").read_text()
    # ECE after temperature scaling, cross-fitted over two halves of the rows, and a diagram
    for name in ("model", "teacher"):
        row = summary["results"][name]
        assert 0 <= row["ece_after_ts"] <= 1 and row["temperature"] > 0
        assert len(summary["calibration"][name]["half_temperatures"]) == 2
    assert (report / "reliability.png").stat().st_size > 1000
    assert main(args) == 2  # never overwritten without --force
    assert main([*args, "--force"]) == 0


def test_prompt_and_padding_tokens_are_never_targets(smollm2_tokenizer, tmp_path):
    from bdkd.llm.data import collate, read_rows, tokenize_rows

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_tokenizer))
    rows = [
        {"prompt": "Name a colour:", "completion": " red"},
        {"prompt": "Hi", "completion": " there you are"},
    ]
    examples, dropped = tokenize_rows(rows, "prompt_completion", tokenizer, max_length=64)
    assert dropped == 0
    batch = collate(examples, pad=0)
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True)):
        prompt = tokenizer(row["prompt"], add_special_tokens=False).input_ids
        assert batch.loss_mask[i, : len(prompt)].sum() == 0
        assert batch.loss_mask[i, len(prompt) : len(ex.ids)].all()
        assert batch.loss_mask[i, len(ex.ids) :].sum() == 0  # padding
        assert ex.ids[-1] == tokenizer.eos_token_id
    # chat messages: only the assistant's answer is a target
    chat = tmp_path / "chat.jsonl"
    chat.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Say hi"},
                    {"role": "assistant", "content": "Hi!"},
                ]
            }
        )
        + "\n"
    )
    rows, fmt = read_rows([chat], "auto")
    (ex,), _ = tokenize_rows(rows, fmt, tokenizer, max_length=256)
    answer = tokenizer.decode(list(ex.ids[ex.loss_start :]))
    assert answer.startswith("Hi!") and "Say hi" not in answer
    assert "Say hi" in tokenizer.decode(list(ex.ids[: ex.loss_start]))


def test_vocabulary_mismatch_names_both_models(
    smollm2_tokenizer, tiny_lms, qa_jsonl, tmp_path, capsys
):
    from conftest import make_tiny_lm

    other = make_tiny_lm(
        tmp_path / "other", smollm2_tokenizer, seed=3, hidden=16, layers=1, vocab=1000
    )
    cfg = _contract_config(tmp_path, {"teacher": tiny_lms["teacher"], "student": other}, qa_jsonl)
    assert main(["llm-distill", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(tiny_lms["teacher"]) in err and str(other) in err and "vocabulary" in err
    assert not (tmp_path / "r").exists()


def _padded(source: Path, out: Path, extra: int) -> Path:
    """``source`` with ``extra`` padding rows in its head and embeddings, made loud (so a
    distribution that included them would differ): what a model family pads to 64 or 128."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(source))
    rows = model.get_output_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows + extra, mean_resizing=False)
    with torch.no_grad():
        model.get_output_embeddings().weight[rows:] = 5.0
    model.save_pretrained(str(out))
    transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(out))
    return out


def test_heads_that_differ_only_by_padding_rows_distil_over_the_tokenizers_tokens(
    tiny_lms, qa_jsonl, tmp_path
):
    padded = _padded(tiny_lms["teacher"], tmp_path / "teacher-padded", 128)
    runs = {}
    for name, teacher in (("plain", tiny_lms["teacher"]), ("padded", padded)):
        nets = {"teacher": teacher, "student": tiny_lms["student"]}
        (tmp_path / name).mkdir()
        cfg = _contract_config(tmp_path / name, nets, qa_jsonl)
        runs[name] = tmp_path / name / "run"
        args = ["llm-distill", str(cfg), "output.save_student=false", "--out", str(runs[name])]
        assert main([*args, "train.on_policy_fraction=0.5"]) == 0
    a, b = (json.loads((runs[n] / "summary.json").read_text()) for n in ("plain", "padded"))
    assert a["vocabulary"]["distilled_over"] is None
    assert b["vocabulary"]["distilled_over"] == b["vocabulary"]["tokenizer"]
    # the padding rows are out of the distributions: the same training, the same student
    sa = torch.load(runs["plain"] / "checkpoints" / "last.pt", weights_only=True)
    sb = torch.load(runs["padded"] / "checkpoints" / "last.pt", weights_only=True)
    for key, value in sa["networks"]["student"].items():
        torch.testing.assert_close(value, sb["networks"]["student"][key], rtol=1e-4, atol=1e-6)
    for key in ("nll", "accuracy", "ece"):
        assert a["results"]["student"][key] == pytest.approx(b["results"]["student"][key], rel=1e-4)
        assert a["results"]["teacher"][key] == pytest.approx(b["results"]["teacher"][key], rel=1e-4)


def test_config_is_checked_before_any_model_loads(tiny_llm_config, tmp_path, capsys, monkeypatch):
    from bdkd.llm import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(models, "load_causal_lm", refuse)
    for override, fragment in (
        (f"data.files=[{tmp_path / 'missing.jsonl'}]", "data.files"),
        (f"teacher.model={tmp_path / 'nowhere'}", "teacher.model"),
        ("student.layers=[0]", "exactly one of model"),
    ):
        assert (
            main(["llm-distill", str(tiny_llm_config), override, "--out", str(tmp_path / "r")]) == 2
        )
        assert fragment in capsys.readouterr().err


def test_students_derived_from_the_teacher(tiny_lms, qa_jsonl, tmp_path):
    from bdkd.llm.models import load_causal_lm, make_student

    teacher, _ = load_causal_lm(str(tiny_lms["teacher"]))
    subset = make_student(teacher, layers=[0, 2])
    torch.testing.assert_close(
        subset.state_dict()["model.layers.1.mlp.up_proj.weight"],
        teacher.state_dict()["model.layers.2.mlp.up_proj.weight"],
    )
    smaller = make_student(
        teacher, config={"num_hidden_layers": 1, "hidden_size": 8, "intermediate_size": 16}
    )
    assert (
        smaller.config.hidden_size == 8 and smaller.config.vocab_size == teacher.config.vocab_size
    )
    cfg = _contract_config(tmp_path, tiny_lms, qa_jsonl)
    run = tmp_path / "r"
    assert (
        main(
            [
                "llm-distill",
                str(cfg),
                "student.model=null",
                "student.layers=[0, 2]",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student"))
    assert loaded.config.num_hidden_layers == 2


def test_lora_student_trains_only_its_adapter(tiny_lms, qa_jsonl, tmp_path):
    pytest.importorskip("peft")
    cfg = _contract_config(tmp_path, tiny_lms, qa_jsonl)
    run = tmp_path / "lora"
    args = [
        "llm-distill",
        str(cfg),
        "student.lora={r: 4, alpha: 8}",
        "train.lr=0.01",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["student_parameters"] / 10
    before = transformers.AutoModelForCausalLM.from_pretrained(
        str(tiny_lms["student"])
    ).state_dict()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["networks"]["student"]
    base = {k: v for k, v in state.items() if "lora_" not in k}
    adapters = {k: v for k, v in state.items() if "lora_B" in k}
    assert adapters and any(v.abs().sum() > 0 for v in adapters.values())  # B starts at 0
    for key, value in base.items():  # every frozen weight unchanged
        plain = key.replace("base_model.model.", "").replace(".base_layer", "")
        torch.testing.assert_close(value, before[plain], msg=key)
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student"))
    assert not any("lora" in k for k in merged.state_dict())
    assert (run / "student-adapter" / "adapter_config.json").is_file()
    # the adapter names the base it was trained on, so PEFT rebuilds the trained student
    adapter = json.loads((run / "student-adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_lms["student"].resolve())
    assert_adapter_gives_the_merged_student(run)


def assert_adapter_gives_the_merged_student(run):
    from peft import AutoPeftModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(run / "student-adapter")).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student")).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=1e-4
        )


def test_a_derived_lora_students_adapter_points_at_its_own_base(tiny_lms, qa_jsonl, tmp_path):
    """A student cut from the teacher's layers has no directory of its own: its unmerged base
    is saved beside the adapter, which names it (it used to name the teacher)."""
    pytest.importorskip("peft")
    cfg = _contract_config(tmp_path, tiny_lms, qa_jsonl)
    run = tmp_path / "derived"
    args = ["llm-distill", str(cfg), "student.model=null", "student.layers=[0, 2]"]
    assert main([*args, "student.lora={r: 4, alpha: 8}", "train.lr=0.01", "--out", str(run)]) == 0
    adapter = json.loads((run / "student-adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((run / "student-base").resolve())
    base = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student-base"))
    assert base.config.num_hidden_layers == 2
    assert_adapter_gives_the_merged_student(run)


def test_on_policy_samples_are_masked_after_their_first_eos(tiny_lms):
    from bdkd.llm.distill import sample_student

    student = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["student"]))
    eos = student.config.eos_token_id
    prompts = torch.tensor([[5, 6, 7], [0, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    # row 0 ends at its 2nd generated token, row 1 never: generate pads row 0 with EOS
    generated = torch.tensor([[11, eos, eos, eos], [12, 13, 14, 15]])
    student.generate = lambda **kw: torch.cat([kw["input_ids"], generated], 1)
    batch = sample_student(
        student, prompts, mask, max_new_tokens=4, pad_token_id=eos, eos_token_id=eos
    )
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1, 0, 0]  # the first EOS is a target
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert batch.loss_mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert batch.attention_mask[1].tolist() == [0, 1, 1, 1, 1, 1, 1]
    assert batch.target_mask()[0].tolist() == [False, False, True, True, False, False]


def test_jsd_endpoints_follow_trls_convention():
    from bdkd import divergences as D
    from bdkd.llm import token_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    torch.testing.assert_close(
        token_loss(s, t, objective="js_divergence", beta=0.0), D.forward_kl(s, t)
    )
    torch.testing.assert_close(
        token_loss(s, t, objective="js_divergence", beta=1.0), D.reverse_kl(s, t)
    )
    assert token_loss(s, t, objective="js_divergence", beta=0.5) > 0


def _tokenized_dataset(tokenizer, n=12):
    rows = []
    for i in range(n):
        prompt = tokenizer(f"What is {i} plus {i}?", add_special_tokens=False).input_ids
        answer = tokenizer(f" It is {2 * i}.", add_special_tokens=False).input_ids + [
            tokenizer.eos_token_id
        ]
        ids = prompt + answer
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [-100] * len(prompt) + answer,
            }
        )
    return rows


def _collate(pad):
    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        out = {k: [] for k in ("input_ids", "attention_mask", "labels")}
        for f in features:
            extra = width - len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [pad] * extra)
            out["attention_mask"].append(f["attention_mask"] + [0] * extra)
            out["labels"].append(f["labels"] + [-100] * extra)
        return {k: torch.tensor(v) for k, v in out.items()}

    return collate


def test_transformers_trainer_with_a_bdkd_objective(tiny_lms, tmp_path):
    from bdkd.llm.distill import CausalLMDistiller, LMBatch
    from bdkd.llm.hf import DistillTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_lms["student"]))
    student = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["student"]))
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["teacher"]))
    data = _tokenized_dataset(tokenizer)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=data,
        data_collator=_collate(tokenizer.eos_token_id),
        teacher_model=teacher,
        objective="ab_divergence",
        objective_params={"alpha": 0.5, "beta": 0.5},
        ce_weight=0.5,
    )
    batch = _collate(tokenizer.eos_token_id)(data[:4])
    loss = trainer.compute_loss(student, dict(batch))
    # the same value as bdkd's own distiller on the same batch
    reference = CausalLMDistiller(
        student, teacher, objective="ab_divergence", ce_weight=0.5, alpha=0.5, beta=0.5
    )
    lm = LMBatch(batch["input_ids"], batch["attention_mask"], (batch["labels"] != -100).long())
    torch.testing.assert_close(loss, sum(reference(lm).values()), rtol=1e-5, atol=1e-6)
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    logged = [h for h in trainer.state.log_history if "loss/ab_divergence" in h]
    assert logged and "loss/ce" in logged[0]


def test_trainer_with_a_lora_student_trains_only_the_adapter(tiny_lms, tmp_path):
    peft = pytest.importorskip("peft")
    from bdkd.llm.hf import DistillTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_lms["student"]))
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["student"]))
    student = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    frozen = {k: v.clone() for k, v in student.named_parameters() if not v.requires_grad}
    lora = {k: v.clone() for k, v in student.named_parameters() if v.requires_grad}
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["teacher"]))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    DistillTrainer(
        model=student,
        args=args,
        train_dataset=_tokenized_dataset(tokenizer),
        data_collator=_collate(tokenizer.eos_token_id),
        teacher_model=teacher,
        objective="bdkd",
    ).train()
    params = dict(student.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in frozen.items())
    assert any(not torch.equal(params[k], v) for k, v in lora.items())


def test_trl_distillation_trainer_with_a_bdkd_objective_keeps_on_policy_generation(
    tiny_lms, tmp_path, monkeypatch
):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from bdkd.llm import hf

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(tiny_lms["student"]), padding_side="left"
    )
    student = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["student"]))
    teacher = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lms["teacher"]))
    prompts = datasets.Dataset.from_list([{"prompt": f"What is {i} plus {i}?"} for i in range(8)])
    config = trl.DistillationConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        max_completion_length=6,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    from bdkd.llm import distill

    cls = hf.trl_distillation_trainer()
    calls = []
    real = distill.fused_linear_divergence

    def spy(*args, **kwargs):
        calls.append(kwargs["objective"])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "fused_linear_divergence", spy)
    trainer = cls(
        model=student,
        teacher_model=teacher,
        args=config,
        train_dataset=prompts,
        processing_class=tokenizer,
        objective="bdkd",
    )
    result = trainer.train()
    assert result.global_step == 2 and calls and set(calls) == {"bdkd"}
    assert torch.isfinite(torch.tensor(result.training_loss))
    logged = [entry for entry in trainer.state.log_history if "entropy" in entry]
    assert logged and all(0 < entry["entropy"] < 11 for entry in logged)  # ln 49152 = 10.8


def test_progress_line_and_tensorboard(tiny_llm_config, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    args = ["llm-distill", str(tiny_llm_config), "train.progress=true", "--out", str(run)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "llm-distill [4/4] bdkd" in err and "it/s" in err
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
