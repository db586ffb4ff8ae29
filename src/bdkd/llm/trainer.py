"""The LLM distillation loop, on the engine's run lifecycle.

:class:`LLMTrainer` is `bdkd llm-distill`'s trainer: its run directory, the rehearsal of the
first step, checkpoints (kind ``llm``), metrics records, trackers and the finish are
:class:`bdkd.engine.lifecycle.RunLifecycle`'s, as for the image :class:`~bdkd.engine.Trainer`;
the learning rate follows the image side's schedules, counted in optimizer steps
(``schedule:``). A step draws micro-batches from train (or, with probability
``on_policy_fraction``, sequences the student samples from train prompts, as in GKD),
accumulates their gradients normalised over the step's target tokens and steps AdamW; a
non-finite loss stops the run at that step. Every ``eval_every`` steps the student is
evaluated on val and a checkpoint is written; at the end the same metrics on test for student
and teacher, ROUGE-L of greedy continuations, and the student saved with ``save_pretrained``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from bdkd.config import ConfigError
from bdkd.data.augment import epoch_seed
from bdkd.engine import distributed
from bdkd.engine.build import autocast_factory, build_schedule
from bdkd.engine.callbacks import Callback
from bdkd.engine.checkpoint import CheckpointError, load_network_state, set_rng_state
from bdkd.engine.lifecycle import RunLifecycle, TrainingDiverged
from bdkd.engine.progress import Progress
from bdkd.files import write_text
from bdkd.llm.batch import LMBatch
from bdkd.llm.build import (
    Built,
    build_data,
    build_models,
    cache_warning,
    check_built_positions,
    check_calibration_split,
    open_teacher_cache,
    pad_id,
)
from bdkd.llm.calibrate import calibrate_models, not_learnt
from bdkd.llm.config import LLMConfig, check_inputs, validate_llm_config
from bdkd.llm.data import collate, prompt_batch
from bdkd.llm.distill import CausalLMDistiller, accumulate_step, sample_student
from bdkd.llm.evaluate import evaluate_lm, greedy, lm_report, strip_after_eos
from bdkd.llm.hidden import build_hidden
from bdkd.llm.metrics import TokenMetrics, mean_rouge_l
from bdkd.llm.objectives import effective_objective
from bdkd.llm.parallel import (
    check_parallel,
    full_optimizer_state,
    full_state,
    load_full_state,
    setup_parallel,
)

__all__ = ["LLMTrainer", "TrainingDiverged", "run_llm_distill"]


class LLMTrainer:
    """Trains and evaluates one LLM distillation config in one run directory (in every
    process of a torchrun group; only the first writes)."""

    def __init__(
        self,
        cfg: LLMConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        force: bool = False,
        protect: tuple[str | Path, ...] = (),
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg, tc = cfg, cfg.train
        self.life = RunLifecycle(
            run_dir,
            kind="llm",
            config=cfg.to_dict(),
            config_text=yaml.safe_dump(cfg.to_dict(), sort_keys=False),
            normalise=lambda d: validate_llm_config(d).to_dict(),
            resume=resume,
            force=force,
            protect=protect,
            threads=tc.threads,
            device=tc.device,
            metric_key="step",
            output=cfg.output,
            callbacks=callbacks,
        )
        self.run_dir, self.device = self.life.run_dir, self.life.device
        check_inputs(cfg)
        check_parallel(cfg, self.life.group)
        self.life.seed(tc.seed)
        teacher, student, tokenizer, vocab = build_models(cfg)
        train, val, test, dropped = build_data(cfg, tokenizer)
        self.built = Built(
            teacher, student, tokenizer, train, val, test, dropped, pad_id(tokenizer), vocab
        )
        check_built_positions(cfg, self.built)
        check_calibration_split(cfg, self.built)
        self.cache = open_teacher_cache(cfg, self.built)
        t, h = cfg.objective, cfg.hidden
        try:
            hidden = build_hidden(student, teacher, weight=h.weight, loss=h.loss, layers=h.layers)
        except ValueError as err:
            raise ConfigError(f"config key 'hidden.layers': {err}") from None
        self.distiller = CausalLMDistiller(
            student,
            teacher,
            objective=t.name,
            temperature=t.temperature,
            distill_weight=t.distill_weight,
            ce_weight=t.ce_weight,
            chunk_size=tc.chunk_size,
            vocab=vocab,
            hidden=hidden,
            **t.params,
        ).to(self.device)
        self.parallel, self.step_module = setup_parallel(
            cfg, self.distiller, self.device, self.life.group
        )
        self.autocast = autocast_factory(self.device, tc.precision)
        groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
        if hidden is not None:  # the projections train with the student's optimizer
            groups.append({"params": list(hidden.parameters())})
        self.optimizer = torch.optim.AdamW(groups, lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = build_schedule(self.optimizer, cfg.schedule, tc.steps)
        self._dry_run()
        self.start, self.elapsed = 0, 0.0
        state = self.life.open()
        if state is not None:
            self._restore(state)
        self._warn()

    @property
    def student(self) -> Any:
        return self.built.student

    @property
    def checkpoint_path(self) -> Path:
        return self.life.checkpoint_path

    def _all_reduce(self) -> Any:
        return distributed.all_reduce_sum if self.parallel.world > 1 else None

    def _dry_run(self) -> None:
        """One real step on two training texts per process (forward, backward, AdamW step),
        rolled back by the lifecycle, before the run directory is touched."""
        train, parallel = self.built.train, self.parallel
        probe = [i % len(train) for i in parallel.shard(list(range(2 * parallel.world)))]
        batch = collate([train[i] for i in probe], self.built.pad, self.device)
        cached = None if self.cache is None else [self.cache.teacher("train", probe)]
        self.distiller.train()

        def step() -> dict[str, float]:
            return accumulate_step(
                self.step_module,
                [batch],
                self.optimizer,
                grad_clip=self.cfg.train.grad_clip,
                cached=cached,
                autocast=self.autocast,
                all_reduce=self._all_reduce(),
                world_size=parallel.world,
            )

        modules = [self.student, *([self.distiller.hidden] if self.distiller.hidden else [])]
        terms = self.life.rehearse(step, modules, [self.optimizer])
        bad = [k for k, v in terms.items() if not (v == v and abs(v) != float("inf"))]
        t = self.cfg.objective
        self.life.check_finite(
            bool(bad),
            lambda: (
                f"objective {t.name!r}: the loss {bad} is not finite on the first texts before "
                "any training; check objective.params and objective.temperature"
            ),
        )

    def _restore(self, state: dict[str, Any]) -> None:
        where = f"checkpoint {self.checkpoint_path}"
        try:
            load_full_state(self.student, self.optimizer, state, self.parallel, where)
            if self.distiller.hidden is not None:
                load_network_state(self.distiller.hidden, state["extra"]["hidden"], where)
            if "schedulers" in state:
                self.scheduler.load_state_dict(state["schedulers"]["student"])
            else:  # format 2: a constant learning rate, nothing to restore
                for _ in range(int(state["step"])):
                    self.scheduler.step()
            set_rng_state(state["rng"])
            self.start = int(state["step"])
        except (KeyError, ValueError, TypeError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(
                f"{where} is incomplete or does not fit this run ({type(err).__name__}: {err})"
            ) from None
        self.elapsed = float(state.get("seconds", 0.0))  # wall-clock before the interruption
        self.life.truncate_metrics(self.start + 1)

    def _warn(self) -> None:
        if not self.parallel.main:
            return
        t = self.cfg.objective
        warning = cache_warning(t.name, t.temperature) if self.cache is not None else None
        if warning:
            print(warning, file=sys.stderr)
        if self.built.dropped:
            print(
                f"llm-distill: {self.built.dropped} text(s) left nothing to learn within "
                f"data.max_length {self.cfg.data.max_length} and were skipped",
                file=sys.stderr,
            )

    # ------------------------------------------------------------------ one step

    def _micro_batches(self, step: int) -> tuple[list[LMBatch], list[list[int]]]:
        """The step's micro-batches (this process's share) and their example indices. Every
        process draws the same global batch from (seed, step) and takes its share of each."""
        tc, built, parallel = self.cfg.train, self.built, self.parallel
        rng = random.Random(epoch_seed(tc.seed, step))
        micro, picked_indices = [], []
        for _ in range(tc.accumulation):
            picked = [rng.randrange(len(built.train)) for _ in range(tc.micro_batch)]
            on_policy = rng.random() < tc.on_policy_fraction
            seed = rng.randrange(2**31)
            mine = parallel.shard(picked)
            examples = [built.train[i] for i in mine]
            picked_indices.append(mine)
            if on_policy:
                ids, mask = prompt_batch(examples, built.pad, self.device)
                micro.append(
                    sample_student(
                        self.student,
                        ids,
                        mask,
                        max_new_tokens=tc.max_new_tokens,
                        temperature=tc.sample_temperature,
                        pad_token_id=built.pad,
                        eos_token_id=built.tokenizer.eos_token_id,
                        generator_seed=seed + parallel.rank,
                        vocab=built.vocab,
                    )
                )
            else:
                micro.append(collate(examples, built.pad, self.device))
        return micro, picked_indices

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (and one step of the schedule); its loss terms."""
        tc = self.cfg.train
        self.distiller.train()
        micro, indices = self._micro_batches(step)
        cached = None if self.cache is None else [self.cache.teacher("train", i) for i in indices]
        terms = accumulate_step(
            self.step_module,
            micro,
            self.optimizer,
            grad_clip=tc.grad_clip,
            cached=cached,
            autocast=self.autocast,
            all_reduce=self._all_reduce(),
            world_size=self.parallel.world,
        )
        self.scheduler.step()
        bad = [k for k, v in terms.items() if not (v == v and abs(v) != float("inf"))]
        self.life.check_finite(
            bool(bad),
            lambda: (
                f"training diverged at step {step + 1}/{tc.steps}: loss term(s) {bad} of the "
                f"student are not finite; the last good checkpoint stays in "
                f"{self.checkpoint_path}; lower train.lr (now {tc.lr:g}) or set train.grad_clip"
            ),
        )
        return terms

    def _evaluate(self, examples: list, split: str, **kwargs: Any) -> dict[str, float]:
        return evaluate_lm(
            self.student,
            self.built.teacher,
            examples,
            self.built.pad,
            self.device,
            batch=self.cfg.train.eval_batch,
            cache=self.cache,
            split=split,
            parallel=self.parallel,
            autocast=self.autocast,
            vocab=self.built.vocab,
            **kwargs,
        )

    def _evaluate_and_save(
        self, step: int, terms: dict[str, float], began: float, lr: float
    ) -> None:
        """Validation metrics, one metrics record and the checkpoint after step ``step``."""
        record = {
            "step": step + 1,
            "train": terms,
            "lr": lr,
            "val": self._evaluate(self.built.val, "val"),
            "seconds": time.perf_counter() - began,
        }
        model_state = full_state(self.student, self.parallel)
        hidden = self.distiller.hidden
        extra = {} if hidden is None else {"hidden": {k: v.detach().cpu() for k, v in hidden.state_dict().items()}}  # fmt: skip
        optimizer_state = full_optimizer_state(self.student, self.optimizer, self.parallel)
        if self.parallel.main:
            self.life.log(record)
            values = {f"val/student/{k}": v for k, v in record["val"].items()}
            values.update({f"train/{k}": v for k, v in terms.items()}, lr=lr)
            self.life.on_eval(step + 1, values)
            self.life.save(
                {
                    "step": step + 1,
                    "deployed": "student",
                    "networks": {"student": model_state},
                    "extra": extra,
                    "optimizers": {"student": optimizer_state},
                    "schedulers": {"student": self.scheduler.state_dict()},
                    "seconds": record["seconds"],
                }
            )
            v = record["val"]
            agreement = v.get("teacher_top1_agreement")
            print(
                f"step {step + 1}/{self.cfg.train.steps} val: perplexity {v['perplexity']:.2f}, "
                f"token ECE {100 * v['ece']:.2f} %"
                + ("" if agreement is None else f", agreement {100 * agreement:.1f} %"),
                file=sys.stderr,
                flush=True,
            )
        distributed.barrier()

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict[str, Any]:
        """Train from the start (or the resumed step) to the end; test; save the student."""
        return self.life.guarded(self._fit)

    def _fit(self) -> dict[str, Any]:
        tc = self.cfg.train
        began = time.perf_counter() - self.elapsed
        progress = Progress(tc.progress and self.parallel.main, tc.steps, "llm-distill")
        for step in range(self.start, tc.steps):
            lr = self.optimizer.param_groups[0]["lr"]
            terms = self.train_step(step)
            if progress.due(step + 1):
                progress.update(step + 1, terms)
            if self.parallel.main and (step + 1) % self.life.log_every == 0:
                self.life.on_step(step + 1, {f"train/{k}": v for k, v in terms.items()})
            if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
                progress.close()
                self._evaluate_and_save(step, terms, began, lr)
        return self.finish(began)

    def _generations(self, results: dict[str, Any], teacher_results: dict[str, Any]) -> None:
        """ROUGE-L of greedy continuations of the test prompts (against the references and,
        with a live teacher, the teacher's continuations)."""
        built, tc, parallel = self.built, self.cfg.train, self.parallel
        eos = built.tokenizer.eos_token_id
        s_gen = strip_after_eos(
            greedy(self.student, built.test, tc.max_new_tokens, built.pad, self.device, parallel),
            eos,
        )
        refs = strip_after_eos([e.completion()[: tc.max_new_tokens] for e in built.test], eos)
        results["rouge_l_vs_reference"] = mean_rouge_l(s_gen, refs)
        if built.teacher is not None:
            t_gen = strip_after_eos(
                greedy(
                    built.teacher, built.test, tc.max_new_tokens, built.pad, self.device, parallel
                ),
                eos,
            )
            results["rouge_l_vs_teacher"] = mean_rouge_l(s_gen, t_gen)
            teacher_results["rouge_l_vs_reference"] = mean_rouge_l(t_gen, refs)

    def _calibrate(
        self,
        results: dict[str, Any],
        teacher_results: dict[str, Any],
        keep: dict[str, TokenMetrics],
        teacher_metrics: TokenMetrics,
    ) -> dict[str, Any]:
        """Token temperatures fitted on validation (student, and a live teacher), the
        student's folded into its head (not when sharded), measured on test; the reliability
        diagram of both before and after."""
        from bdkd.report import reliability_diagram

        built = self.built
        networks, before = {"student": built.student}, {"student": results}
        if built.teacher is not None and self.cache is None:
            networks["teacher"], before["teacher"] = built.teacher, teacher_results
        record, after = calibrate_models(
            networks,
            before,
            built.val,
            built.test,
            built.pad,
            self.device,
            fold=None if self.parallel.fsdp else "student",
            vocab=built.vocab,
            batch=self.cfg.train.eval_batch,
            parallel=self.parallel,
            autocast=self.autocast,
        )
        if self.parallel.fsdp:
            record["student"]["fold_note"] = "a sharded (FSDP) student: T is in summary.json only"
        if "teacher" not in record:
            record["teacher"] = None  # a cached teacher: no logits left to fit on
        if self.parallel.main:
            panels = {"student": keep["student"].reliability()}
            panels[f"student, T = {record['student']['temperature']:.3g}"] = after[
                "student"
            ].reliability()
            if "teacher" in after:
                panels["teacher"] = teacher_metrics.reliability()
                panels[f"teacher, T = {record['teacher']['temperature']:.3g}"] = after[
                    "teacher"
                ].reliability()
            reliability_diagram(panels, self.run_dir / "reliability.png")
        return record

    def finish(self, began: float) -> dict[str, Any]:
        """Test metrics of student and teacher, ROUGE-L, the student saved, summary.json and
        report.md."""
        from bdkd.llm.models import save_student

        cfg, built, tc, t = self.cfg, self.built, self.cfg.train, self.cfg.objective
        teacher_metrics, keep = TokenMetrics(), {}
        results = self._evaluate(built.test, "test", teacher_metrics=teacher_metrics, keep=keep)
        if self.cache is not None:
            teacher_results = dict(self.cache.meta["teacher_metrics"]["test"])
        else:
            teacher_results = teacher_metrics.compute()
        self._generations(results, teacher_results)
        calibration = None
        if cfg.output.calibrated:
            calibration = self._calibrate(results, teacher_results, keep, teacher_metrics)
        student, teacher = built.student, built.teacher
        summary = {
            "objective": t.name,
            "effective_objective": effective_objective(t.name, t.params)[0],
            "params": t.params,
            "temperature": t.temperature,
            "teacher": cfg.teacher.model,
            "teacher_cache": None
            if self.cache is None
            else {"path": str(self.cache.path), "k": self.cache.k},
            "processes": self.parallel.world,
            "device": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else f"cpu, {torch.get_num_threads()} threads",
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "teacher_parameters": None
            if teacher is None
            else sum(p.numel() for p in teacher.parameters()),
            "steps": tc.steps,
            "seed": tc.seed,
            "splits": {"train": len(built.train), "val": len(built.val), "test": len(built.test)},
            "dropped_texts": built.dropped,
            "vocabulary": {
                "tokenizer": len(built.tokenizer),
                "student_rows": int(student.get_output_embeddings().weight.shape[0]),
                "distilled_over": built.vocab,  # None: the whole head (equal heads)
            },
            "seconds": time.perf_counter() - began,
            "results": {"student": results, "teacher": teacher_results},
            "calibration": calibration,
            "flags": [
                f"{name}: {flag}"
                for name, m in (("student", results), ("teacher", teacher_results))
                if (flag := not_learnt(m))
            ],
        }
        if cfg.output.save_student:
            state = full_state(student, self.parallel) if self.parallel.fsdp else None
            if self.parallel.main:
                save_student(
                    student,
                    built.tokenizer,
                    self.run_dir / "student",
                    state_dict=state,
                    base=adapter_base(cfg.student.model),
                )
                summary["student_dir"] = str(self.run_dir / "student")
        if self.parallel.main:
            write_text(self.run_dir / "report.md", lm_report(summary, f"{t.name} distillation"))
        files = ("report.md", "reliability.png") if calibration else ("report.md",)
        self.life.finish(summary, files)
        return summary


def adapter_base(model: str | None) -> str | None:
    """What a LoRA adapter's ``base_model_name_or_path`` can name: the student's own
    ``save_pretrained`` directory (or cached hub id); None for a student derived from the
    teacher or read from a GGUF file, whose base is then saved beside the adapter."""
    if model is None or model.endswith(".gguf") or model == "smollm2":
        return None
    return str(Path(model).resolve()) if Path(model).is_dir() else model


def run_llm_distill(
    cfg: LLMConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    protect: tuple[str | Path, ...] = (),
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and evaluate one LLM distillation config in ``run_dir`` (in every process of a
    torchrun group; only the first writes)."""
    trainer = LLMTrainer(
        cfg, run_dir, resume=resume, force=force, protect=protect, callbacks=callbacks
    )
    return trainer.fit()
