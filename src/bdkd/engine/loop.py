"""The training loop: one loop for every distiller, short enough to read in one sitting.

One step: uint8 batch on the device -> tensor augmentation -> the distiller runs each
network once and returns named loss terms -> one backward -> each network's optimizer
steps. Each epoch every network is evaluated on val; at the end on test, with a temperature
fitted on val. The run directory, the rehearsal of the first step, checkpoints and metrics
records go through :class:`bdkd.engine.lifecycle.RunLifecycle`; what differs between image
classification and segmentation is the run's task (:mod:`bdkd.engine.tasks`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bdkd.config import Config, ConfigError, dump_config, validate
from bdkd.engine import build, distributed, tasks
from bdkd.engine.callbacks import Callback
from bdkd.engine.checkpoint import CheckpointError, load_network_state, set_rng_state
from bdkd.engine.evaluate import Evaluation, evaluate_networks
from bdkd.engine.lifecycle import (
    CHECKPOINT_FORMAT,
    RESUME_MAY_CHANGE,
    RunLifecycle,
    TrainingDiverged,
    check_checkpoint_matches,
    check_resumable,
)
from bdkd.engine.logit_cache import TeacherLogitCache, state_hash
from bdkd.engine.progress import Progress
from bdkd.engine.selection import Selection

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_MAY_CHANGE",
    "Trainer",
    "TrainingDiverged",
    "check_checkpoint_matches",
    "check_resumable",
]


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class Trainer:
    """Trains and evaluates one config in one run directory."""

    def __init__(
        self,
        cfg: Config,
        run_dir: str | Path,
        *,
        resume: bool = False,
        force: bool = False,
        protect: tuple[str | Path, ...] = (),
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = cfg
        self.life = RunLifecycle(
            run_dir,
            kind="image",
            config=cfg.to_dict(),
            config_text=dump_config(cfg),
            normalise=lambda d: validate(d).to_dict(),
            resume=resume,
            force=force,
            protect=protect,
            threads=cfg.train.threads,
            device=cfg.train.device,
            output=cfg.output,
            callbacks=callbacks,
        )
        self.run_dir, self.device, self.dist = self.life.run_dir, self.life.device, self.life.group
        self.is_main = self.life.is_main
        self.life.seed(cfg.train.seed)
        self.splits = build.load_splits(cfg)
        self.info = self.splits.info
        self.task = tasks.for_dataset(self.info)
        networks = build.build_networks(cfg, self.splits)
        self.distiller = build.build_distiller(
            cfg, networks, self.task.layout, num_samples=len(self.splits.train)
        ).to(self.device)
        self.augment = self.task.augment(cfg.data)
        self.loaders = build.build_loaders(
            cfg, self.splits, self.device, self.dist.rank, self.dist.world_size
        )
        groups = self.distiller.parameter_groups()
        self.optimizers = {
            n: build.build_optimizer(p, cfg.network_optim(n)) for n, p in groups.items()
        }
        self.schedulers = {
            n: build.build_schedule(opt, cfg.network_schedule(n), cfg.train.epochs)
            for n, opt in self.optimizers.items()
        }
        self._autocast = build.autocast_factory(self.device, cfg.train.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        if cfg.train.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        if cfg.train.compile:
            for net in self.distiller.networks.values():
                net.forward = torch.compile(net.forward)
                if hasattr(net, "forward_with_features"):
                    net.forward_with_features = torch.compile(net.forward_with_features)
        # One DDP wrapper over the distiller: it owns every network (and any method-owned
        # module such as USKD's head), so one backward syncs every trainable gradient.
        self.step_module: Any = self.distiller
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.step_module = DistributedDataParallel(
                self.distiller,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self._dry_run()
        self.cache = self._open_cache()
        self.start_epoch = 0
        self.selection = Selection(cfg.train.save_best, cfg.train.early_stop)
        state = self.life.open()
        self.run_id = self.life.run_id
        if state is not None:
            self._restore(state)
        else:
            self._prepare()
        self._frozen_val: Evaluation | None = None

    # ------------------------------------------------------------------ before the run

    def _train_images(self, start: int, stop: int) -> tuple[Tensor, Tensor]:
        """Training samples ``start:stop`` on the device, not augmented, and their labels."""
        split = self.splits.train
        stop = min(stop, len(split))
        if hasattr(split, "images"):
            images, labels = split.images[start:stop], split.labels[start:stop]
        else:
            items = [split[i] for i in range(start, stop)]
            images = torch.stack([im for im, _ in items])
            labels = torch.stack([torch.as_tensor(lb) for _, lb in items])
        x = self.augment(images.to(self.device), train=False)
        return x, labels.to(self.device).long()

    def _probe_batch(self) -> tuple[Tensor, Tensor]:
        return self._train_images(0, 2)

    def _dry_run(self) -> None:
        """Before the run directory is touched: every network once on two training images
        (a model that fails on this dataset, or gives logits of the wrong shape, is named),
        then one real training step on them — forward, backward, optimizer step — rolled
        back by the lifecycle (:meth:`RunLifecycle.rehearse`)."""
        x, labels = self._probe_batch()
        self.distiller.eval()
        try:
            with torch.no_grad(), self._autocast():
                for name, net in self.distiller.networks.items():
                    model = self.cfg.networks[name].model
                    try:
                        z = net(x)
                    except Exception as err:  # a user's model may raise anything
                        text = _first_line(err)
                        hint = (
                            f" (the images have {x.shape[1]} channel(s): data.channels sets "
                            "that for image folders, networks.<name>.kwargs the model's)"
                            if "channel" in text
                            else ""
                        )
                        raise ConfigError(
                            f"network {name!r} ({model}) fails on this dataset's images "
                            f"{tuple(x.shape[1:])}: {type(err).__name__}: {text}{hint}"
                        ) from err
                    self.task.check_logits(name, model, z, x.shape[0])
        finally:
            self.distiller.train()

        def diverged(out: Any) -> TrainingDiverged:
            return TrainingDiverged(
                f"method {self.cfg.method_name!r}: the loss is not finite on the first images "
                f"before any training ({self._non_finite_terms(out)}); check the method's "
                "hyper-parameters"
            )

        try:
            self.life.rehearse(
                lambda: self._step(x, labels, 0, None, diverged, torch.arange(x.shape[0])),
                [self.distiller],
                self.optimizers.values(),
                self.scaler,
            )
        except (TrainingDiverged, ConfigError):
            raise
        except Exception as err:  # a user's model (its backward too) may raise anything
            raise ConfigError(
                f"method {self.cfg.method_name!r}: the first training step (forward, backward, "
                f"optimizer step) fails on two training images: {type(err).__name__}: "
                f"{_first_line(err)}; nothing was written"
            ) from err

    def _prepare(self) -> None:
        """A new run: :meth:`Distiller.prepare` on every training image, not augmented."""
        n, size = len(self.splits.train), self.cfg.data.eval_batch_size
        batches = (self._train_images(start, start + size) for start in range(0, n, size))
        self.distiller.eval()
        try:
            with self._autocast():
                self.distiller.prepare(batches)
        finally:
            self.distiller.train()

    def _open_cache(self) -> TeacherLogitCache | None:
        path = self.cfg.train.teacher_cache
        if not path:
            return None
        if not self.distiller.cacheable:
            raise ConfigError(
                f"config key 'train.teacher_cache': method {self.cfg.method_name!r} reads the "
                "teacher's features, so the teacher runs on every batch; remove the cache"
            )
        if not self.task.supports_logit_cache:
            raise ConfigError(
                "config key 'train.teacher_cache': the teacher-logit cache stores class logits "
                f"per image; it is not for {self.task.name} (a logit map per image)"
            )
        frozen = self.distiller.frozen
        if frozen != ("teacher",):
            raise ConfigError(
                f"config key 'train.teacher_cache': only offline methods (one frozen network named "
                f"'teacher') can cache logits; method {self.cfg.method_name!r} freezes {list(frozen)}"
            )
        d, aug = self.cfg.data, self.augment
        key = {
            "teacher": state_hash(self.distiller.networks["teacher"]),
            "dataset": self.info.name,
            "val_size": d.val_size,
            "train_size": len(self.splits.train),
            "seed": self.cfg.train.seed,
            "augmentation": [
                aug.crop_padding,
                aug.flip,
                aug.resized_crop,
                list(aug.mean),
                list(aug.std),
            ],
            "precision": self.cfg.train.precision,
        }
        args = dict(
            static=aug.crop_padding == 0 and not aug.flip and not aug.resized_crop,
            epochs=self.cfg.train.epochs,
            n=len(self.splits.train),
            num_classes=self.info.num_classes,
            dtype=self.cfg.train.teacher_cache_dtype,
            key=key,
        )
        cache = TeacherLogitCache(path, create=self.is_main, **args) if self.is_main else None
        distributed.barrier()
        return cache if cache is not None else TeacherLogitCache(path, create=False, **args)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.life.checkpoint_path

    def _save(self, epoch: int, path: Path | None = None) -> None:
        nets = self.distiller.networks
        extra = {
            k: v for k, v in self.distiller.state_dict().items() if not k.startswith("networks.")
        }
        self.life.save(
            {
                "epoch": epoch,
                "method": self.cfg.method_name,
                "dataset": self.info.name,
                "num_classes": self.info.num_classes,
                "deployed": self.distiller.deployed,
                "models": {n: self.cfg.networks[n].model for n in nets},
                "networks": {n: m.state_dict() for n, m in nets.items()},
                "extra": extra,
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "scaler": self.scaler.state_dict(),
                "selection": self.selection.state(),
            },
            path,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.checkpoint_path
        try:
            for name, net in self.distiller.networks.items():
                load_network_state(net, state["networks"][name], f"checkpoint {path}, {name}")
            load_network_state(
                self.distiller,
                {**self.distiller.state_dict(), **state["extra"]},
                f"checkpoint {path}",
            )
            for name, opt in self.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sched in self.schedulers.items():
                sched.load_state_dict(state["schedulers"][name])
            self.scaler.load_state_dict(state["scaler"])
            self.selection.load(state.get("selection"))
            set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, IndexError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(
                f"checkpoint {path} is incomplete or does not fit this run ({type(err).__name__}: {err})"
            ) from None
        self.start_epoch = int(state["epoch"])
        self.life.truncate_metrics(self.start_epoch)

    # ------------------------------------------------------------------ one epoch

    def _step(  # fmt: skip
        self, x: Tensor, labels: Tensor, epoch: int, cached: Any, diverged: Any, index: Any = None
    ) -> Any:
        """One training step on ``x``: forward through the distiller, the finiteness check
        (``diverged(out)`` is raised when the loss is not finite), backward, optimizer steps.
        ``index`` (the samples' positions in the training set) goes to a method that uses it."""
        extra = {"index": index} if self.distiller.uses_index else {}
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.step_module(x, labels, epoch, cached, **extra)
        total = out.total()
        if not self._all_finite(total):
            raise diverged(out)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        for opt in self.optimizers.values():
            if self.cfg.train.grad_clip:
                self.scaler.unscale_(opt)
                group_params = [p for g in opt.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(group_params, self.cfg.train.grad_clip)
            self.scaler.step(opt)
        self.scaler.update()
        return out

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over train; returns the mean of every loss term and diagnostic."""
        self.distiller.train()
        loader = self.loaders.train
        loader.set_epoch(epoch)
        params = self.augment.epoch_params(
            len(self.splits.train), self.cfg.train.seed, epoch, self.device
        )
        use_cache = self.cache is not None and self.cache.complete(epoch)
        fill_cache = self.cache is not None and not use_cache
        sums: dict[str, Tensor] = {}
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        progress = Progress(
            self.cfg.train.progress and self.is_main,
            len(loader),
            f"epoch {epoch + 1}/{self.cfg.train.epochs}",
        )
        start = time.perf_counter()
        for step, (images, labels, index) in enumerate(loader, start=1):
            x, labels = self.augment.apply_pair(images, labels, params, index)
            cached = None
            if use_cache:
                cached = {"teacher": self.cache.read(epoch, index).to(self.device)}

            def diverged(out: Any, step: int = step) -> TrainingDiverged:
                return self._diverged(out, epoch, step, len(loader))

            out = self._step(x, labels, epoch, cached, diverged, index)
            if fill_cache:
                self.cache.write(epoch, index, out.logits["teacher"])
            n = labels.shape[0]
            count += n
            for key, value in {**out.flat_terms(), **out.diagnostics}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().double() * n
            steps_done = epoch * len(loader) + step
            if progress.due(step) or (
                self.life.listening and steps_done % self.life.log_every == 0
            ):
                running = {k: float(v / count) for k, v in sums.items()}
                if progress.due(step):
                    progress.update(step, {k: running[k] for k in out.flat_terms()})
                if self.is_main and steps_done % self.life.log_every == 0:
                    self.life.on_step(steps_done, {f"train/{k}": v for k, v in running.items()})
        progress.close()
        for sched in self.schedulers.values():
            sched.step()
        if fill_cache:
            distributed.barrier()
            if self.is_main:
                self.cache.mark_complete(epoch)
            distributed.barrier()
            self.cache.reload()
        keys = sorted(sums)
        totals = distributed.all_reduce_sum(torch.stack([sums[k] for k in keys] + [count]))
        means = {k: float(totals[i] / totals[-1]) for i, k in enumerate(keys)}
        return {"terms": means, "seconds": time.perf_counter() - start}

    def _all_finite(self, total: Tensor) -> bool:
        """Whether the loss is finite on every process (one scalar sync per step)."""
        bad = (~torch.isfinite(total.detach())).float().reshape(1)
        if self.dist.enabled:
            bad = distributed.all_reduce_sum(bad)
        return not bool(bad.item())

    @staticmethod
    def _non_finite_terms(out: Any) -> str:
        bad = [
            f"term {term!r} of network {net!r} is {float(value.detach())}"
            for net, terms in out.losses.items()
            for term, value in terms.items()
            if not torch.isfinite(value.detach()).all()
        ]
        return "; ".join(bad) or "on another process"

    def _diverged(self, out: Any, epoch: int, step: int, steps: int) -> TrainingDiverged:
        kept = (
            f"the last good checkpoint ({epoch} epochs) stays in {self.checkpoint_path}"
            if epoch > 0
            else "no checkpoint was written"
        )
        lrs = ", ".join(f"{n} {o.param_groups[0]['lr']:.3g}" for n, o in self.optimizers.items())
        return TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {step}/{steps}: "
            f"{self._non_finite_terms(out)}; {kept}; lower the learning rate (now {lrs}) "
            "or set train.grad_clip"
        )

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        loader: Any,
        *,
        networks: list[str] | None = None,
        keep_logits: bool = False,
        **task_options: Any,
    ) -> Evaluation:
        """``networks`` (default: all) on ``loader``: metrics, and logits and labels if asked
        (classification; segmentation keeps a pixel sample, ``task_options``)."""
        self.distiller.eval()
        nets = self.distiller.networks
        task_options.setdefault("seed", self.cfg.train.seed)
        return evaluate_networks(
            {n: nets[n] for n in (networks or list(nets))},
            loader,
            self.task.evaluator(
                lambda images: self.augment(images, train=False),
                self.cfg.eval.bins,
                **task_options,
            ),
            autocast=self._autocast,
            keep_logits=keep_logits,
        )

    def frozen_evaluation(self) -> Evaluation | None:
        """The frozen networks on val, once per process: they cannot change."""
        frozen = list(self.distiller.frozen)
        if not frozen or self.loaders.val is None:
            return None
        if self._frozen_val is None:
            self._frozen_val = self.evaluate(self.loaders.val, networks=frozen, keep_logits=True)
        return self._frozen_val

    def validate_epoch(self) -> dict[str, dict[str, float]]:
        """Every network's val metrics: trained ones evaluated now, frozen ones once."""
        if self.loaders.val is None:
            return {}
        trained = [n for n in self.distiller.networks if n in self.distiller.trainable]
        now = self.evaluate(self.loaders.val, networks=trained)
        frozen = self.frozen_evaluation()
        return {n: (now if n in trained else frozen).metrics(n) for n in self.distiller.networks}

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end, then evaluate on test and write the run
        (callbacks and trackers are closed whatever happens)."""
        return self.life.guarded(self._fit)

    def _fit(self) -> dict[str, Any]:
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            lrs = {n: o.param_groups[0]["lr"] for n, o in self.optimizers.items()}
            record = self.train_epoch(epoch)
            record = {
                "epoch": epoch,
                "lr": lrs,
                "train": record["terms"],
                "seconds": record["seconds"],
                "val": self.validate_epoch() if self._validates(epoch) else {},
            }
            better, stop = self.selection.update(
                epoch + 1, record["val"].get(self.distiller.deployed)
            )
            if self.is_main:
                self.life.log(record)
                self._save(epoch + 1)
                if better:
                    self._save(epoch + 1, self.run_dir / "checkpoints" / "best.pt")
                self._track(record)
                self._print_epoch(epoch, record)
            if stop:
                print(
                    f"early stop after epoch {epoch + 1}: {self.selection.describe()}",
                    file=sys.stderr,
                )
                break
        return self.finish()

    def _print_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        shown = ", ".join(
            f"{n} acc {100 * m['accuracy']:.2f} ece {100 * m['ece']:.2f}"
            for n, m in record["val"].items()
        )
        terms = ", ".join(f"{k} {v:.4f}" for k, v in record["train"].items() if "/" in k)
        print(
            f"epoch {epoch + 1}/{self.cfg.train.epochs} ({record['seconds']:.1f}s) "
            + (f"val: {shown}" if shown else f"train: {terms}"),
            file=sys.stderr,
            flush=True,
        )

    def _validates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` ends with a validation pass (``eval.val_every``; always
        after the last epoch)."""
        every = self.cfg.eval.val_every
        return (epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.epochs

    def _track(self, record: dict[str, Any]) -> None:
        """The epoch's loss terms (every epoch) and its validation metrics (when it had a
        validation) to the callbacks and trackers (per-class lists stay in metrics.jsonl)."""
        epoch = record["epoch"] + 1
        values = {f"train/{k}": v for k, v in record["train"].items()}
        values["lr"] = next(iter(record["lr"].values()), 0.0)
        self.life.on_epoch(epoch, values)
        if record["val"]:
            val = {}
            for net, metrics in record["val"].items():
                val.update({f"val/{net}/{k}": v for k, v in metrics.items()})
            self.life.on_eval(epoch, val)

    def finish(self) -> dict[str, Any]:
        """Test metrics for every network, temperature fitted on val, summary and report."""
        from bdkd import report

        results, predictions, panels = self.task.test_phase(self)
        e = self.cfg.eval
        curves, notes = tasks.trust_of(results, predictions, e.target_risk, e.conformal_alpha)
        for name, note in notes.items():
            if self.is_main:
                print(f"warning: {name}'s fitted temperature: {note}", file=sys.stderr)
        metrics_path = self.life.metrics_path
        history = (
            [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            if metrics_path.is_file()
            else []
        )
        summary = {
            "method": self.cfg.method_name,
            "dataset": self.info.name,
            "task": self.task.name,
            "seed": self.cfg.train.seed,
            "epochs": self.cfg.train.epochs,
            "deployed": self.distiller.deployed,
            "models": {n: self.cfg.networks[n].model for n in self.distiller.networks},
            "parameters": {
                n: sum(p.numel() for p in m.parameters())
                for n, m in self.distiller.networks.items()
            },
            "bins": self.cfg.eval.bins,
            "seconds_per_epoch": sum(r["seconds"] for r in history) / max(1, len(history)),
            "results": results,
            **self.task.summary_extra(),
        }
        if self.selection.metric is not None or self.selection.stopped:
            summary["selection"] = self.selection.state()
        if self.is_main:
            pred_dir = self.run_dir / "predictions"
            pred_dir.mkdir(exist_ok=True)
            for name, arrays in predictions.items():
                report.save_predictions(pred_dir / f"{name}.npz", *arrays)
            report.write_run_report(
                self.run_dir,
                summary,
                panels,
                keys=self.task.report_keys,
                unit=self.task.unit,
                note=self.task.sample_note,
                sections=self.task.report_sections,
                curves=curves,
            )
        self.life.finish(summary, ("report.md", "reliability.png", "risk_coverage.png"))
        return summary
