"""Distilling causal language models built with transformers.

:class:`CausalLMDistiller` turns a batch of token sequences into named loss terms: the
token-level objective between the student's and the teacher's next-token distributions,
through the fused LM-head path (neither network's (tokens, V) logits are materialised), and
optionally the student's next-token cross-entropy. :func:`accumulate_step` does one optimizer
step over micro-batches with the loss normalised by the valid tokens of the whole batch, so
it equals one large batch. :func:`sample_student` draws on-policy sequences (GKD).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.llm.batch import LMBatch, TopKTeacher
from bdkd.llm.fused import fused_linear_divergence, fused_linear_topk_divergence
from bdkd.llm.hidden import HiddenStates


def logit_postprocessing(model: nn.Module) -> tuple[float, float | None]:
    """(scale, softcap) a causal LM applies to its head's output, from its config
    (``logit_scale`` / ``output_multiplier``, ``final_logit_softcapping``); (1, None) for most."""
    config = getattr(model, "config", None)
    if config is None:
        return 1.0, None
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(config, "logit_scale", None)
    if scale is None:
        scale = getattr(config, "output_multiplier", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    return float(scale) if scale is not None else 1.0, softcap


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """The base model (hidden states after the final norm) and the LM head of a causal LM
    (a PEFT-wrapped one too: its adapters sit inside the decoder's layers)."""
    decoder = (
        model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    )
    head = (
        model.get_output_embeddings()
        if hasattr(model, "get_output_embeddings")
        else getattr(model, "lm_head", None)
    )
    if decoder is None or not isinstance(head, nn.Linear):
        raise TypeError(f"{type(model).__name__} does not expose a decoder and a linear LM head")
    return decoder, head


def through(module: nn.Module, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` as ``module``'s forward, so that what wraps the module's calls (FSDP2's
    gathering and freeing of its sharded parameters) happens around it. ``fn`` may use the
    module's submodules and parameters directly."""
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        module.forward = original
        return fn()

    module.forward = forward
    try:
        return module()
    finally:
        module.forward = original


def distill_hidden(
    student: nn.Module,
    teacher: nn.Module | None,
    student_hidden: Tensor,
    teacher_hidden: Tensor | None,
    mask: Tensor,
    *,
    objective: str,
    temperature: float,
    params: dict[str, float],
    normalizer: float | None = None,
    chunk_size: int = 1024,
    ce_labels: Tensor | None = None,
    ce_weight: float = 0.0,
    divergence_weight: float = 1.0,
    stats: dict[str, Tensor] | None = None,
    cached: TopKTeacher | None = None,
    vocab: int | None = None,
) -> Tensor:
    """The token objective between two causal LMs given their final hidden states (B, T, H)
    at the positions of ``mask``, through both LM heads by the fused path (each model's own
    logit post-processing applied); or against a cached top-k teacher (``cached``, no
    teacher model needed). Mean over the valid tokens, or their sum divided by
    ``normalizer``. With ``ce_labels`` the student's cross-entropy (times ``ce_weight``) is
    added in the same pass and reported in ``stats``. Shared by :class:`CausalLMDistiller`
    and the trainer adapters. ``vocab`` keeps the first ``vocab`` rows of both heads (the
    tokenizer's tokens, when the heads differ by padding rows): the distributions are over
    those tokens alone."""
    _, s_head = decoder_and_head(student)
    rows = slice(None) if vocab is None else slice(0, vocab)
    s_weight = s_head.weight[rows]
    s_bias = None if s_head.bias is None else s_head.bias[rows]
    s_post = logit_postprocessing(student)
    common = dict(
        bias=s_bias,
        mask=mask,
        objective=objective,
        temperature=temperature,
        reduction="sum" if normalizer is not None else "mean",
        normalizer=normalizer,
        chunk_size=chunk_size,
        logit_scale=s_post[0],
        logit_softcap=s_post[1],
        ce_labels=ce_labels,
        ce_weight=ce_weight,
        divergence_weight=divergence_weight,
        stats=stats,
        **params,
    )
    if cached is not None:
        return fused_linear_topk_divergence(
            student_hidden,
            s_weight,
            cached.ids.to(student_hidden.device),
            cached.log_probs.to(student_hidden.device),
            cached.tail_log_mass.to(student_hidden.device),
            **common,
        )
    _, t_head = decoder_and_head(teacher)
    t_post = logit_postprocessing(teacher)
    return fused_linear_divergence(
        student_hidden,
        s_weight,
        teacher_hidden=teacher_hidden.to(student_hidden.device),
        teacher_weight=t_head.weight[rows],
        teacher_bias=None if t_head.bias is None else t_head.bias[rows],
        teacher_logit_scale=t_post[0],
        teacher_logit_softcap=t_post[1],
        **common,
    )


class CausalLMDistiller(nn.Module):
    """Teacher (frozen) and student causal LMs, and the objective between them.

    ``objective`` is any of :data:`bdkd.llm.TOKEN_OBJECTIVES` (its hyper-parameters in
    ``params``); ``distill_weight`` scales it and ``ce_weight`` adds the student's next-token
    cross-entropy, computed in the same fused pass. ``teacher`` may be None when every
    batch comes with its cached top-k teacher. ``hidden`` adds hidden-state distillation
    (:class:`bdkd.llm.hidden.HiddenStates`, its projections owned here), term ``hidden``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        objective: str = "forward_kl",
        temperature: float = 1.0,
        distill_weight: float = 1.0,
        ce_weight: float = 0.0,
        chunk_size: int = 1024,
        vocab: int | None = None,
        hidden: HiddenStates | None = None,
        **params: float,
    ) -> None:
        super().__init__()
        self.student, self.teacher, self.vocab = student, teacher, vocab
        self.hidden = hidden
        if teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.sharded = False  # set when FSDP shards the models: run them through their roots
        self.objective, self.temperature, self.params = objective, temperature, params
        self.distill_weight, self.ce_weight, self.chunk_size = distill_weight, ce_weight, chunk_size

    def train(self, mode: bool = True) -> CausalLMDistiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(
        self,
        batch: LMBatch,
        normalizer: float | None = None,
        cached: TopKTeacher | None = None,
    ) -> dict[str, Tensor]:
        """Named loss terms of ``batch``; ``normalizer`` divides token sums (accumulation);
        ``cached`` replaces the teacher by its top-k cache for this batch's target tokens.

        The student's cross-entropy (``ce_weight``) is computed in the fused pass too; the
        terms are ``{objective, "ce"}`` whose sum is the loss (the gradient of both flows
        through the objective's entry; ``ce`` is its detached part, for logging)."""
        mask = batch.target_mask()
        s_decoder, _ = decoder_and_head(self.student)
        t_hidden = None
        if cached is not None and self.hidden is not None:
            raise ValueError("hidden-state distillation needs the live teacher, not a cache")
        if cached is None and self.teacher is None:
            raise ValueError("no teacher: pass the batch's cached top-k teacher (cached=)")
        if cached is None:
            t_decoder, _ = decoder_and_head(self.teacher)

            def teacher_hidden() -> Any:
                return t_decoder(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    output_hidden_states=self.hidden is not None,
                )

            with torch.no_grad():
                t_out = through(self.teacher, teacher_hidden) if self.sharded else teacher_hidden()
            t_hidden = t_out.last_hidden_state[:, :-1]
        stats: dict[str, Tensor] = {}
        extra: dict[str, Tensor] = {}

        def student_loss() -> Tensor:
            s_out = s_decoder(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                output_hidden_states=self.hidden is not None,
            )
            s_hidden = s_out.last_hidden_state[:, :-1]
            if self.hidden is not None:
                cut = [h[:, :-1] for h in s_out.hidden_states]
                t_cut = [h[:, :-1] for h in t_out.hidden_states]
                extra["hidden"] = self.hidden(cut, t_cut, mask, normalizer)
            return distill_hidden(
                self.student,
                self.teacher,
                s_hidden,
                t_hidden,
                mask,
                objective=self.objective,
                temperature=self.temperature,
                params=self.params,
                normalizer=normalizer,
                chunk_size=self.chunk_size,
                ce_labels=batch.input_ids[:, 1:] if self.ce_weight else None,
                ce_weight=self.ce_weight,
                divergence_weight=self.distill_weight,
                stats=stats,
                cached=cached,
                vocab=self.vocab,
            )

        total = through(self.student, student_loss) if self.sharded else student_loss()
        if not self.ce_weight:
            return {self.objective: total, **extra}
        ce = stats.get("ce", torch.zeros((), device=total.device))
        return {self.objective: total - ce, "ce": ce, **extra}


def accumulate_step(
    distiller: Any,
    micro_batches: Sequence[LMBatch],
    optimizer: torch.optim.Optimizer,
    *,
    grad_clip: float | None = None,
    cached: Sequence[TopKTeacher | None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
    world_size: int = 1,
) -> dict[str, float]:
    """One optimizer step over ``micro_batches``; the loss is normalised by the valid target
    tokens of all of them together, so the gradient equals that of one large batch.

    ``distiller`` is a :class:`CausalLMDistiller` or its DDP / FSDP wrapper. In a process
    group each process holds a share of every micro-batch: ``all_reduce`` sums the token
    count over processes, and the loss is multiplied by ``world_size`` because the wrappers
    average gradients, so the step equals one process with the whole batch. ``cached``: the
    top-k teacher of each micro-batch (no teacher runs)."""
    counts = torch.tensor(
        [float(sum(int(b.target_mask().sum()) for b in micro_batches))], dtype=torch.float64
    )
    if all_reduce is not None:
        counts = all_reduce(counts)
    total_tokens = float(counts[0])
    if total_tokens == 0:
        raise ValueError("the micro-batches hold no target tokens")
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        # under DDP, gradients are averaged over processes once, after the last micro-batch
        quiet = distiller.no_sync() if i < last and hasattr(distiller, "no_sync") else None
        with quiet or contextlib.nullcontext():
            with autocast():
                terms = distiller(batch, total_tokens, None if cached is None else cached[i])
            (sum(terms.values()) * world_size).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    if all_reduce is not None and sums:  # report the whole batch's terms
        keys = sorted(sums)
        totals = all_reduce(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        sums = {k: float(totals[j]) for j, k in enumerate(keys)}
    if grad_clip:
        params = [p for p in optimizer.param_groups[0]["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return sums


@torch.no_grad()
def _suppress_padding(model: nn.Module, vocab: int | None) -> dict[str, Any]:
    """``generate`` keywords that keep the head's padding rows (ids >= vocab) out of samples."""
    rows = decoder_and_head(model)[1].weight.shape[0]
    if vocab is None or vocab >= rows:
        return {}
    return {"suppress_tokens": list(range(vocab, rows))}


def sample_student(
    student: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    pad_token_id: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    generator_seed: int | None = None,
    vocab: int | None = None,
) -> LMBatch:
    """On-policy sequences: the student continues each (left-padded) prompt by sampling; the
    generated tokens are the targets (GKD's on-policy data).

    A row that ends early is padded by ``generate`` after its end-of-sequence token: those
    positions are masked (attention and loss); the end-of-sequence token itself is a target,
    since stopping is what the student must learn. ``eos_token_id`` defaults to the
    student's generation config; with ``vocab``, ids at or past it (padding rows of the
    head) are never sampled.
    """
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = student.training
    student.eval()
    out = student.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        pad_token_id=pad_token_id,
        **_suppress_padding(student, vocab),
    )
    student.train(was_training)
    generated = out[:, prompt_ids.shape[1] :]
    if eos_token_id is None:
        eos_token_id = getattr(getattr(student, "generation_config", None), "eos_token_id", None)
    eos = (
        []
        if eos_token_id is None
        else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    )
    is_eos = torch.isin(
        generated, torch.tensor(eos, device=generated.device, dtype=generated.dtype)
    )
    after_eos = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    valid = (~after_eos).to(prompt_mask.dtype)
    attention = torch.cat([prompt_mask, valid], 1)
    loss_mask = torch.cat([torch.zeros_like(prompt_mask), valid], 1)
    return LMBatch(out, attention, loss_mask)
