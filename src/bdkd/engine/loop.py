"""The training loop: one loop for every distiller, short enough to read in one sitting.

One step: uint8 batch on the device -> tensor augmentation -> the distiller runs each
network once and returns named loss terms -> one backward -> each network's optimizer
steps. Each epoch every network is evaluated on val; at the end on test, with a temperature
fitted on val. Everything a run produces goes into its run directory.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bdkd import calibration as cal
from bdkd.config import Config, ConfigError, config_differences, dump_config, validate
from bdkd.engine import build, distributed
from bdkd.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_network_state,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from bdkd.engine.evaluate import Evaluation, evaluate_networks, make_task
from bdkd.engine.logit_cache import TeacherLogitCache, state_hash
from bdkd.engine.progress import Progress, open_tensorboard
from bdkd.engine.rundir import (
    RunDirError,
    append_jsonl,
    check_run_dir,
    create_run_dir,
    read_marker,
    truncate_metrics,
    write_text_atomic,
)
from bdkd.files import write_json

CHECKPOINT_FORMAT = 2

RESUME_MAY_CHANGE = (
    "train.progress",
    "train.threads",
    "train.device",
    "train.teacher_cache",
    "data.root",
    "output",
)
"""Config keys that may differ between a checkpoint and the run resuming it: where things
are and how the run is shown, never what is computed. ``train.epochs`` is not among them:
the learning-rate schedule depends on it, so a resumed run finishes the schedule it began."""


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the message names the step, term and network."""


def check_resumable(run_dir: str | Path) -> dict[str, Any]:
    """The marker of a run directory that ``--resume`` can continue (else a RunDirError)."""
    run_dir = Path(run_dir)
    marker = read_marker(run_dir)
    if marker is None:
        raise RunDirError(
            f"{run_dir}: no bdkd run marker (.bdkd-run), so it is not a run directory to resume"
        )
    if not (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir}: no config.yaml, so it cannot be resumed")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise RunDirError(f"{run_dir}: no checkpoints/last.pt yet; start it again with --force")
    return marker


def check_checkpoint_matches(
    state: dict[str, Any],
    cfg_dict: dict[str, Any],
    marker: dict[str, Any],
    path: Path,
    normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Refuse a checkpoint written by another run, or under a config that differs from the
    run's ``config.yaml`` beyond :data:`RESUME_MAY_CHANGE`. ``normalise`` validates the
    checkpoint's config as the run's was (so that a key added to bdkd since, at its default,
    is no difference)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format')!r}, this bdkd writes and resumes "
            f"format {CHECKPOINT_FORMAT}"
        )
    if state.get("run_id") != marker.get("run_id"):
        raise CheckpointError(
            f"checkpoint {path} was written by another run (run id {state.get('run_id')!r}, this "
            f"directory's is {marker.get('run_id')!r}); it cannot continue this run"
        )
    saved = state["config"]
    if normalise is not None:
        try:
            saved = normalise(saved)
        except ConfigError:
            pass  # compared as written: the differences name what no longer validates
    diffs = config_differences(saved, cfg_dict, RESUME_MAY_CHANGE)
    if diffs:
        raise ConfigError(
            f"cannot resume {path.parent.parent}: its config.yaml differs from the checkpoint's in "
            f"{'; '.join(diffs)} (only {', '.join(RESUME_MAY_CHANGE)} may change; start a new "
            "run instead)"
        )


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
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        # Look before building anything; touch the directory only once all is validated.
        marker = check_resumable(self.run_dir) if resume else None
        if not resume:
            check_run_dir(self.run_dir, force=force, protect=protect)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        device = build.resolve_device(cfg.train.device)
        self.dist = distributed.init_from_env(device.type)
        self.is_main = self.dist.is_main
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        seed_everything(cfg.train.seed)
        self.splits = build.load_splits(cfg)
        self.info = self.splits.info
        networks = build.build_networks(cfg, self.splits)
        self.distiller = build.build_distiller(cfg, networks).to(self.device)
        self.distiller.ignore_index = self.info.ignore_index
        self.augment = build.build_augment(cfg, self.splits)
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
        self.start_epoch = 0
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
        if resume:
            self.run_id = str(marker["run_id"])
            self._restore(marker)
        elif self.is_main:
            self.run_id = create_run_dir(self.run_dir, force=force, protect=protect)
            write_text_atomic(self.run_dir / "config.yaml", dump_config(cfg))
        distributed.barrier()
        if not resume and not self.is_main:
            self.run_id = str((read_marker(self.run_dir) or {}).get("run_id", ""))
        self.tensorboard = open_tensorboard(self.run_dir) if self.is_main else None
        self._frozen_val: Evaluation | None = None

    def _dry_run(self) -> None:
        """One forward of every network and of the method's loss on two training images,
        before the run directory is touched: a setting that would fail only inside the first
        step fails here. No state changes: eval mode, no gradients, RNG states restored."""
        split = self.splits.train
        count = min(2, len(split))
        if hasattr(split, "images"):
            images, labels = split.images[:count], split.labels[:count]
        else:
            items = [split[i] for i in range(count)]
            images = torch.stack([im for im, _ in items])
            labels = torch.stack([torch.as_tensor(lb) for _, lb in items])
        x = self.augment(images.to(self.device), train=False)
        saved = rng_state()
        try:
            self.distiller.eval()
            with torch.no_grad(), self._autocast():
                for name, net in self.distiller.networks.items():
                    try:
                        z = net(x)
                    except (RuntimeError, ValueError, TypeError) as err:
                        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                        raise ConfigError(
                            f"network {name!r} ({self.cfg.networks[name].model}) fails on this "
                            f"dataset's images {tuple(x.shape[1:])}: {first}"
                        ) from None
                    dense = self.info.task == "segmentation"
                    ok = isinstance(z, Tensor) and (
                        z.dim() == 4 and z.shape[:2] == (count, self.info.num_classes)
                        if dense
                        else z.shape == (count, self.info.num_classes)
                    )
                    if not ok:
                        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
                        want = "(N, C, H, W)" if dense else "(N, C)"
                        raise ConfigError(
                            f"network {name!r} ({self.cfg.networks[name].model}) must return "
                            f"logits of shape {want} with C = {self.info.num_classes}, got {got}"
                        )
                out = self.distiller(x, labels.to(self.device).long(), 0)
            if not torch.isfinite(out.total()):
                bad = self._non_finite_terms(out)
                raise TrainingDiverged(
                    f"method {self.cfg.method_name!r}: the loss is not finite on the first images "
                    f"before any training ({bad}); check the method's hyper-parameters"
                )
        finally:
            set_rng_state(saved)
            self.distiller.train()

    def _open_cache(self) -> TeacherLogitCache | None:
        path = self.cfg.train.teacher_cache
        if not path:
            return None
        if self.info.task != "classification":
            raise ConfigError(
                "config key 'train.teacher_cache': the teacher-logit cache stores class logits "
                f"per image; it is not for {self.info.task} (a logit map per image)"
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
        return self.run_dir / "checkpoints" / "last.pt"

    def _save(self, epoch: int) -> None:
        nets = self.distiller.networks
        extra = {
            k: v for k, v in self.distiller.state_dict().items() if not k.startswith("networks.")
        }
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "run_id": self.run_id,
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
                "rng": rng_state(),
                "config": self.cfg.to_dict(),
            },
            self.checkpoint_path,
        )

    def _restore(self, marker: dict[str, Any]) -> None:
        path = self.checkpoint_path
        state = load_checkpoint(path, map_location=self.device)
        check_checkpoint_matches(
            state, self.cfg.to_dict(), marker, path, lambda d: validate(d).to_dict()
        )
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
            set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, IndexError) as err:
            if isinstance(err, CheckpointError):
                raise
            raise CheckpointError(
                f"checkpoint {path} is incomplete or does not fit this run ({type(err).__name__}: {err})"
            ) from None
        self.start_epoch = int(state["epoch"])
        if self.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.start_epoch)

    # ------------------------------------------------------------------ one epoch

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
            with self._autocast():
                out = self.step_module(x, labels, epoch, cached)
            total = out.total()
            if not self._all_finite(total):
                raise self._diverged(out, epoch, step, len(loader))
            if fill_cache:
                self.cache.write(epoch, index, out.logits["teacher"])
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
            n = labels.shape[0]
            count += n
            for key, value in {**out.flat_terms(), **out.diagnostics}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().double() * n
            if progress.due(step):
                progress.update(step, {k: float(sums[k] / count) for k in out.flat_terms()})
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
        if self.info.task == "segmentation":
            task_options.setdefault("seed", self.cfg.train.seed)
        return evaluate_networks(
            {n: nets[n] for n in (networks or list(nets))},
            loader,
            make_task(
                self.info,
                lambda images: self.augment(images, train=False),
                self.cfg.eval.bins,
                **task_options,
            ),
            autocast=self._autocast,
            keep_logits=keep_logits,
        )

    def _frozen_evaluation(self) -> Evaluation | None:
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
        frozen = self._frozen_evaluation()
        return {n: (now if n in trained else frozen).metrics(n) for n in self.distiller.networks}

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to the end, then evaluate on test and write the run."""
        metrics_path = self.run_dir / "metrics.jsonl"
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
            if self.is_main:
                append_jsonl(metrics_path, record)
                self._save(epoch + 1)
                self._log_tensorboard(record)
                self._print_epoch(epoch, record)
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

    def _log_tensorboard(self, record: dict[str, Any]) -> None:
        if self.tensorboard is None:
            return
        step = record["epoch"] + 1
        for key, value in record["train"].items():
            self.tensorboard.add_scalar(f"train/{key}", value, step)
        for net, metrics in record["val"].items():
            for key, value in metrics.items():
                if isinstance(value, (int, float)):  # per-class lists stay in metrics.jsonl
                    self.tensorboard.add_scalar(f"val/{net}/{key}", value, step)
        self.tensorboard.flush()

    def _test_results(self) -> tuple[dict[str, dict[str, Any]], dict[str, tuple], dict[str, Any]]:
        """Classification: every network on test; a temperature fitted on val's kept logits.
        Returns (results, what each prediction file holds, reliability panels)."""
        trained = [n for n in self.distiller.networks if n in self.distiller.trainable]
        val = None
        if self.loaders.val is not None:
            now = self.evaluate(self.loaders.val, networks=trained, keep_logits=True)
            frozen = self._frozen_evaluation()
            val = {n: (now if n in trained else frozen).logits[n] for n in self.distiller.networks}
            val_labels = now.labels if trained else frozen.labels
        test = self.evaluate(self.loaders.test, keep_logits=True)
        test_logits, test_labels = test.logits, test.labels
        results: dict[str, dict[str, Any]] = {}
        for name in self.distiller.networks:
            m = test.metrics(name)
            if self.cfg.eval.temperature_scaling and val is not None:
                t = cal.fit_temperature(val[name], val_labels)
                scaled = cal.calibration_metrics(
                    cal.apply_temperature(test_logits[name], t),
                    test_labels,
                    n_bins=self.cfg.eval.bins,
                )
                m.update(temperature=t, ece_after_ts=scaled["ece"], nll_after_ts=scaled["nll"])
            results[name] = m
        predictions = {
            n: (
                test_logits[n],
                test_labels,
                None if val is None else val[n],
                None if val is None else val_labels,
            )
            for n in results
        }
        panels = {n: (torch.softmax(test_logits[n].double(), 1), test_labels) for n in results}
        return results, predictions, panels

    SAMPLE_PIXELS = 200_000
    """Segmentation: the temperature is fitted on a uniform sample of about this many
    validation pixels, and as many test pixels are saved with the predictions."""

    def _test_results_dense(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple], dict[str, Any]]:
        """Segmentation: pixel metrics of every network on test, streamed; a temperature per
        network fitted on a pixel sample of val, and the metrics after it streamed too."""
        pixels = self.info.image_size**2

        def fraction(split: Any) -> float:
            return min(1.0, self.SAMPLE_PIXELS / max(1, len(split) * pixels))

        temperatures: dict[str, float] = {}
        val_samples: dict[str, tuple] = {}
        if self.loaders.val is not None:
            val = self.evaluate(self.loaders.val, sample_fraction=fraction(self.splits.val))
            for name, acc in val.accumulators.items():
                val_samples[name] = acc.sample()
                if self.cfg.eval.temperature_scaling:
                    temperatures[name] = cal.fit_temperature(*val_samples[name])
        test = self.evaluate(
            self.loaders.test, sample_fraction=fraction(self.splits.test), temperatures=temperatures
        )
        results = {n: test.metrics(n) for n in self.distiller.networks}
        predictions = {
            n: (*test.accumulators[n].sample(), *val_samples.get(n, (None, None))) for n in results
        }
        panels = {n: test.accumulators[n].reliability() for n in results}
        return results, predictions, panels

    def finish(self) -> dict[str, Any]:
        """Test metrics for every network, temperature fitted on val, summary and report."""
        from bdkd import report

        dense = self.info.task == "segmentation"
        results, predictions, panels = self._test_results_dense() if dense else self._test_results()
        metrics_path = self.run_dir / "metrics.jsonl"
        history = (
            [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            if metrics_path.is_file()
            else []
        )
        summary = {
            "method": self.cfg.method_name,
            "dataset": self.info.name,
            "task": self.info.task,
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
        }
        if dense:
            summary["class_names"] = list(self.info.class_names)
        if self.is_main:
            pred_dir = self.run_dir / "predictions"
            pred_dir.mkdir(exist_ok=True)
            for name, arrays in predictions.items():
                report.save_predictions(pred_dir / f"{name}.npz", *arrays)
            write_json(self.run_dir / "summary.json", summary)
            report.write_run_report(self.run_dir, summary, panels)
            if self.tensorboard is not None:
                self.tensorboard.close()
        distributed.barrier()
        return summary
