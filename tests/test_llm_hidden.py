"""Hidden-state distillation for causal LMs: the loss against a loop, the layer mapping, a
run whose projections train, resume exactly and stay out of the saved student, and bad
input as one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bdkd.cli import main
from bdkd.llm.hidden import HiddenStates, hidden_state_loss, resolve_layers

HIDDEN = ["hidden.weight=1.0", "hidden.loss=mse", "hidden.layers=[[1, 2], [-1, -1]]"]


def loop_loss(s, t, mask, kind, normalizer=None):
    values = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            a, c = s[b, i].tolist(), t[b, i].tolist()
            if kind == "mse":
                values.append(sum((x - y) ** 2 for x, y in zip(a, c, strict=True)) / len(a))
            else:
                dot = sum(x * y for x, y in zip(a, c, strict=True))
                na, nc = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in c))
                values.append(1 - dot / (na * nc))
    return sum(values) / (normalizer if normalizer is not None else len(values))


@pytest.mark.parametrize("kind", ["cosine", "mse"])
@pytest.mark.parametrize("normalizer", [None, 17.0])
def test_the_hidden_loss_matches_a_loop(kind, normalizer):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    got = hidden_state_loss(s, t, mask, kind, normalizer).item()
    assert got == pytest.approx(loop_loss(s, t, mask, kind, normalizer), rel=1e-5)
    assert hidden_state_loss(t, t, mask, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_layer_pairs_and_projections():
    assert resolve_layers([], 2, 3) == [(2, 3)]
    assert resolve_layers([[1, 2], [-1, -1], [0, 0]], 2, 3) == [(1, 2), (2, 3), (0, 0)]
    with pytest.raises(ValueError, match=r"\[5, 1\]: the student has hidden states 0..2"):
        resolve_layers([[5, 1]], 2, 3)
    same = HiddenStates([(1, 1)], 4, 4)
    assert torch.equal(same.projections[0].weight, torch.eye(4))  # identity where widths agree
    states = [torch.randn(1, 3, 4) for _ in range(2)]
    mask = torch.ones(1, 3)
    assert same(states, states, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_state_distillation_trains_resumes_and_stays_out_of_the_student(
    tmp_path, monkeypatch, tiny_llm_config
):
    from bdkd.llm import trainer as llm_trainer

    cfg = str(tiny_llm_config)
    args = ["objective.name=forward_kl", "train.on_policy_fraction=0.0", *HIDDEN]
    whole = tmp_path / "whole"
    assert main(["llm-distill", cfg, *args, "--out", str(whole)]) == 0
    line = json.loads((whole / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"forward_kl", "hidden"} <= set(line["train"]) and line["train"]["hidden"] > 0
    state = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    proj = state["extra"]["hidden"]
    assert set(proj) == {"projections.0.weight", "projections.1.weight"}
    assert tuple(proj["projections.0.weight"].shape) == (32, 16)  # student 16 -> teacher 32
    # the projections train in the student's AdamW: its second group, with moments
    opt = state["optimizers"]["student"]
    ids = opt["param_groups"][1]["params"]
    assert len(opt["param_groups"]) == 2 and len(ids) == 2
    assert all(opt["state"][i]["exp_avg"].abs().sum() > 0 for i in ids)
    from safetensors.torch import load_file

    saved = {k for f in (whole / "student").glob("*.safetensors") for k in load_file(str(f))}
    assert saved and not any("projection" in k for k in saved)

    real = llm_trainer.LLMTrainer.train_step

    def crash_at_the_third_step(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, step)

    broken = tmp_path / "broken"
    monkeypatch.setattr(llm_trainer.LLMTrainer, "train_step", crash_at_the_third_step)
    assert main(["llm-distill", cfg, *args, "--out", str(broken)]) == 130
    monkeypatch.setattr(llm_trainer.LLMTrainer, "train_step", real)
    assert main(["llm-distill", "--resume", str(broken)]) == 0
    again = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)
    for key, value in proj.items():
        assert torch.equal(value, again["extra"]["hidden"][key]), key
    for key, value in state["networks"]["student"].items():
        assert torch.equal(value, again["networks"]["student"][key]), key


def test_hidden_state_bad_input_is_one_line(tmp_path, capsys, tiny_llm_config):
    cfg = str(tiny_llm_config)
    out = ["--out", str(tmp_path / "x")]
    assert main(["llm-distill", cfg, "hidden.weight=1", "hidden.layers=[[7, 1]]", *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "config key 'hidden.layers'" in err[-1] and "0..2" in err[-1], err
    assert main(["llm-distill", cfg, "hidden.weight=1", "train.parallel=fsdp", *out]) == 2
    assert "config key 'hidden.weight'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
