"""bdkd's token objectives inside the Hugging Face trainers.

- :class:`DistillTrainer` is a ``transformers.Trainer`` for offline distillation: batches
  with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where a token is not a
  target, the usual convention of transformers' collators); the loss is any bdkd token
  objective between the student and a frozen teacher, through the fused LM-head path (no
  (tokens, vocabulary) logits), optionally plus the student's cross-entropy. The student
  runs through its own ``forward`` (so DDP/FSDP wrappers see it), with
  ``output_hidden_states=True`` and ``logits_to_keep=1``.
- :func:`trl_distillation_trainer` returns a subclass of TRL's ``DistillationTrainer`` whose
  loss is a bdkd objective instead of TRL's generalized JSD, keeping TRL's on-policy
  generation, batching, logging and distributed setup.

Both take ``objective`` (any of :data:`bdkd.llm.TOKEN_OBJECTIVES`), ``objective_params``
(e.g. ``{"alpha": 0.5, "beta": 0.5}`` for ABKD) and a temperature. A PEFT/LoRA student works
in both: only its adapter's parameters require gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.llm.distill import decoder_and_head, distill_hidden, logit_postprocessing
from bdkd.llm.fused import postprocess
from bdkd.llm.objectives import token_rows


def _check_objective(objective: str, params: Mapping[str, float] | None) -> dict[str, float]:
    params = dict(params or {})
    token_rows(objective, **params)  # a clear error now rather than at the first step
    return params


@torch.no_grad()
def entropy_sum(
    hidden: Tensor,
    head: nn.Linear,
    mask: Tensor,
    *,
    chunk_size: int = 1024,
    post: tuple = (1.0, None),
) -> Tensor:
    """The sum over valid tokens of the entropy (nats) of ``softmax(head(hidden))``, chunked."""
    h = hidden.reshape(-1, hidden.shape[-1])[mask.reshape(-1).bool()]
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for i in range(0, h.shape[0], chunk_size):
        z = postprocess(head(h[i : i + chunk_size]).float(), *post)
        log_p = torch.log_softmax(z, dim=-1)
        total += -(log_p.exp() * log_p).sum()
    return total


def _hidden_through_forward(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The final hidden states (after the last norm) from the model's own forward."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=True,
        logits_to_keep=1,
        use_cache=False,
    )
    return out.hidden_states[-1]


def _base_trainer() -> type:
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "the Trainer integration needs transformers: pip install 'bdkd[llm]'"
        ) from None
    return transformers.Trainer


class DistillTrainer(_base_trainer()):  # type: ignore[misc]
    """``transformers.Trainer`` that distils ``teacher_model`` into ``model`` with a bdkd
    token objective. Logs the objective and the cross-entropy separately."""

    def __init__(
        self,
        *args: Any,
        teacher_model: nn.Module,
        objective: str = "bdkd",
        objective_params: Mapping[str, float] | None = None,
        temperature: float = 1.0,
        distill_weight: float = 1.0,
        ce_weight: float = 0.0,
        chunk_size: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.objective = objective
        self.objective_params = _check_objective(objective, objective_params)
        self.objective_temperature = temperature
        self.distill_weight, self.ce_weight, self.chunk_size = distill_weight, ce_weight, chunk_size
        self.teacher_model = teacher_model.to(self.args.device).eval()
        self.teacher_model.requires_grad_(False)
        self._terms: dict[str, list[float]] = {}

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        input_ids, attention = inputs["input_ids"], inputs["attention_mask"]
        labels = inputs.get("labels")
        target = (labels[:, 1:] != -100) if labels is not None else attention[:, 1:].bool()
        target = target & attention[:, 1:].bool()
        s_hidden = _hidden_through_forward(model, input_ids, attention)[:, :-1]
        unwrapped = self.accelerator.unwrap_model(model)
        t_decoder, _ = decoder_and_head(self.teacher_model)
        with torch.no_grad():
            t_hidden = t_decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state[
                :, :-1
            ]
        normalizer = None if num_items_in_batch is None else float(num_items_in_batch)
        stats: dict[str, Tensor] = {}
        loss = distill_hidden(
            unwrapped,
            self.teacher_model,
            s_hidden,
            t_hidden,
            target,
            objective=self.objective,
            temperature=self.objective_temperature,
            params=self.objective_params,
            normalizer=normalizer,
            chunk_size=self.chunk_size,
            ce_labels=input_ids[:, 1:] if self.ce_weight else None,
            ce_weight=self.ce_weight,
            divergence_weight=self.distill_weight,
            stats=stats,
        )
        terms = {k if k == "ce" else self.objective: float(v) for k, v in stats.items()}
        for k, v in terms.items():
            self._terms.setdefault(k, []).append(v)
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds the mean of each loss term since the last log to the Trainer's logs."""
        if self._terms and "loss" in logs:
            for k, values in self._terms.items():
                logs[f"loss/{k}"] = sum(values) / len(values)
            self._terms = {}
        super().log(logs, *args, **kwargs)


def _trl_loss(
    trainer: Any, model: nn.Module, inputs: dict[str, Tensor], num_items_in_batch: Any
) -> Tensor:
    """The bdkd objective over the completion tokens of a TRL batch (prompt and on-policy
    completion), the student through its own (wrapped) forward; records the mean student
    entropy for :meth:`log`."""
    if model.training and inputs.get("num_items_in_batch") is not None:
        # counted over the generated completions, per process (DDP averages)
        count = inputs["num_items_in_batch"].clamp(min=1.0)
        num_items_in_batch = count / trainer.accelerator.num_processes
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    keep = inputs["completion_ids"].size(1)
    s_hidden = _hidden_through_forward(model, input_ids, attention)[:, :-1][:, -keep:]
    student = trainer.accelerator.unwrap_model(model)
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    teacher.eval()
    t_decoder, _ = decoder_and_head(teacher)
    with torch.no_grad():
        t_hidden = t_decoder(
            input_ids=input_ids, attention_mask=attention, use_cache=False
        ).last_hidden_state[:, :-1][:, -keep:]
    valid = mask.bool()
    loss = distill_hidden(
        student,
        teacher,
        s_hidden,
        t_hidden,
        valid,
        objective=trainer.objective,
        temperature=trainer.objective_temperature,
        params=trainer.objective_params,
        normalizer=None if num_items_in_batch is None else float(num_items_in_batch),
    )
    s_head = student.get_output_embeddings()
    total = entropy_sum(s_hidden.detach(), s_head, valid, post=logit_postprocessing(student))
    tokens = trainer.accelerator.gather_for_metrics(valid.sum().reshape(1)).sum()
    total = trainer.accelerator.gather_for_metrics(total.reshape(1)).sum()
    trainer._entropy.append(float(total / tokens) if tokens > 0 else 0.0)
    return loss


def trl_distillation_trainer() -> type:
    """A subclass of TRL's ``DistillationTrainer`` whose loss is a bdkd token objective.

    Construct it like TRL's trainer, with the extra keyword arguments ``objective``
    (default ``"bdkd"``), ``objective_params`` and ``objective_temperature`` (default: the
    config's ``temperature``, which TRL uses for sampling and for its JSD). Generation
    (on-policy completions of the dataset's prompts), batching, logging, PEFT and
    distributed training are TRL's; only the public ``compute_loss`` hook is replaced: the
    student runs through its own (wrapped) forward, so DDP and FSDP see it, and the mean
    student entropy is logged as TRL logs it.
    """
    try:
        from trl import DistillationTrainer
    except ImportError:
        raise ImportError("the TRL integration needs trl: pip install 'bdkd[llm]'") from None

    class BdkdDistillationTrainer(DistillationTrainer):
        def __init__(
            self,
            *args: Any,
            objective: str = "bdkd",
            objective_params: Mapping[str, float] | None = None,
            objective_temperature: float | None = None,
            **kwargs: Any,
        ) -> None:
            self.objective = objective
            self.objective_params = _check_objective(objective, objective_params)
            super().__init__(*args, **kwargs)
            self.objective_temperature = (
                self.temperature if objective_temperature is None else objective_temperature
            )
            self._entropy: list[float] = []

        def compute_loss(
            self,
            model: nn.Module,
            inputs: dict[str, Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Tensor | int | None = None,
        ) -> Tensor | tuple[Tensor, Any]:
            loss = _trl_loss(self, model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            """Adds the mean student entropy (nats per token) since the last log."""
            if self._entropy and "loss" in logs:
                logs["entropy"] = sum(self._entropy) / len(self._entropy)
                self._entropy = []
            super().log(logs, *args, **kwargs)

    return BdkdDistillationTrainer
