"""Calibrated LLM students: a token temperature fitted on validation, folded into the saved
head (tied and untied), measured before and after; models that learnt nothing flagged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")

import torch  # noqa: E402

from bdkd.cli import main  # noqa: E402
from bdkd.llm.calibrate import fit_lm_temperature, fold_problem, fold_temperature  # noqa: E402


def tiny_llama(tokenizer_dir: Path, *, tied: bool, seed: int = 0):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(cfg).eval(), tok


@pytest.mark.parametrize("tied", [True, False])
def test_a_folded_temperature_survives_save_and_from_pretrained(smollm2_tokenizer, tmp_path, tied):
    import transformers

    model, tok = tiny_llama(smollm2_tokenizer, tied=tied)
    ids = torch.tensor([tok("def f(x): return x + 1")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    embeddings = model.get_input_embeddings().weight.detach().clone()
    assert fold_problem(model) is None
    untied = fold_temperature(model, 1.7)
    assert untied is tied
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before / 1.7, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.get_input_embeddings().weight, embeddings)
    model.save_pretrained(str(tmp_path / "m"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, before / 1.7, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.get_input_embeddings().weight, embeddings)


class Peek(torch.nn.Module):
    """A model whose next-token logits are ``a`` on the true next token plus a fixed random
    row per current token: right often, wrong sometimes, with an interior best T."""

    def __init__(self, vocab: int, a: float = 6.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, generator=g) * 3.0
        self.a = a

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        z = self.table[input_ids].clone()
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        z.scatter_add_(2, nxt[..., None], torch.full_like(z[..., :1], self.a))
        return SimpleNamespace(logits=z)


def test_the_fitted_temperature_minimises_the_validation_nll():
    """Against a brute-force float64 fit on the same logits (scipy's bounded minimiser)."""
    from scipy.optimize import minimize_scalar

    from bdkd.llm.data import Example, collate

    g = torch.Generator().manual_seed(1)
    examples = [
        Example(tuple(torch.randint(1, 300, (20,), generator=g).tolist()), 4, 4) for _ in range(10)
    ]
    model = Peek(300)
    fit = fit_lm_temperature(model, examples, 0, torch.device("cpu"), batch=3)
    lm = collate(examples, 0, torch.device("cpu"))
    z = model(input_ids=lm.input_ids).logits[:, :-1]
    mask = lm.target_mask()
    z, y = z[mask].double(), lm.input_ids[:, 1:][mask]
    assert fit["tokens"] == y.numel() and 10 <= fit["errors"] < y.numel()

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / t, y))

    ref = minimize_scalar(nll, bounds=(0.01, 100.0), method="bounded").x
    assert 0.2 < ref < 20  # interior
    assert fit["temperature"] == pytest.approx(ref, rel=0.01)
    assert fit["val_nll_before"] == pytest.approx(nll(1.0), rel=1e-6)
    assert fit["val_nll_after"] == pytest.approx(nll(fit["temperature"]), rel=1e-6)
    assert fit["note"] is None


def test_llm_distill_saves_the_calibrated_student_and_reports_before_and_after(
    tiny_llm_config, tmp_path
):
    import transformers

    from bdkd.files import safe_torch_load

    run = tmp_path / "run"
    assert main(["llm-distill", str(tiny_llm_config), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    cal = summary["calibration"]["student"]
    t = cal["temperature"]
    assert cal["folded"] and 0.001 < t < 1000
    for part in ("before", "after"):
        assert set(cal[part]) == {"accuracy", "ece", "nll", "brier"}
    assert cal["after"]["nll"] <= cal["before"]["nll"] + 0.05
    assert summary["calibration"]["teacher"]["folded"] is False
    assert (run / "reliability.png").stat().st_size > 1000
    report = (run / "report.md").read_text()
    assert "temperature fitted on the validation split" in report and "reliability.png" in report
    # an untrained tiny student: its calibration numbers come with the flag
    assert any(
        f.startswith("student: calibration numbers of a model that has not learnt")
        for f in summary["flags"]
    )
    assert "has not learnt the task" in report
    # the saved student's logits are the trained student's (the last checkpoint) / T
    saved = transformers.AutoModelForCausalLM.from_pretrained(str(run / "student")).eval()
    config = yaml.safe_load(tiny_llm_config.read_text())
    trained = transformers.AutoModelForCausalLM.from_pretrained(config["student"]["model"]).eval()
    state = safe_torch_load(run / "checkpoints" / "last.pt")
    trained.load_state_dict(state["networks"]["student"])
    ids = torch.tensor([[1, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(
            saved(input_ids=ids).logits, trained(input_ids=ids).logits / t, rtol=1e-4, atol=1e-5
        )


def test_calibration_can_be_turned_off_and_needs_validation_tokens(
    tiny_llm_config, tmp_path, capsys
):
    run = tmp_path / "off"
    args = ["llm-distill", str(tiny_llm_config), "output.calibrated=false"]
    assert main([*args, "output.save_student=false", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["calibration"] is None and not (run / "reliability.png").exists()
    capsys.readouterr()
    few = tmp_path / "few"
    assert main(["llm-distill", str(tiny_llm_config), "data.val_size=1", "--out", str(few)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "output.calibrated" in err[-1] and "Traceback" not in "".join(err)
    assert not few.exists()
