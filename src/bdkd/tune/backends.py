"""Where trials run: a local process pool, or Ray (one machine or a cluster).

Both run :func:`bdkd.tune.trials.run_trial` on a trial's plain-data spec and hand back its
result; the driver (:func:`execute`) decides what may start. With Ray each trial is a task
with ``num_cpus``/``num_gpus`` resources, so Ray places them on whichever node has room;
run directories must then be on a file system every node sees (the tune's ``--out``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from bdkd.files import append_jsonl
from bdkd.tune.trials import Trial, finished, run_trial

__all__ = [
    "BACKENDS",
    "Backend",
    "LocalBackend",
    "RayBackend",
    "TuneError",
    "execute",
    "make_backend",
]


class TuneError(RuntimeError):
    """A tune that cannot start or cannot go on (one line)."""


class Backend:
    """Runs trial specs ``slots`` at a time."""

    name = ""
    slots = 1

    def submit(self, spec: dict[str, Any]) -> Any:
        raise NotImplementedError

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        """Block until at least one handle is done; (handle, result or the error) each."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the workers."""


def _die_with_parent() -> None:
    """A worker is killed with its driver (Linux), so that a killed tune never leaves a
    trial running that a rerun would start again in the same directory."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalBackend(Backend):
    """A pool of ``workers`` fresh processes (spawned, so nothing of the driver leaks in)."""

    name = "local"

    def __init__(self, workers: int, threads: int) -> None:
        self.slots, self.threads = workers, threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        self.pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent
        )

    def submit(self, spec: dict[str, Any]) -> Future:
        return self.pool.submit(run_trial, spec)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for f in done:
            err = f.exception()
            out.append((f, err if err is not None else f.result()))
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _answers(address: str, timeout: float = 5.0) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class RayBackend(Backend):
    """Trials as Ray tasks: ``address`` joins a running cluster (``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``), None starts Ray on this machine. ``max_concurrent`` bounds how
    many run at once; ``cpus``/``gpus`` are each trial's resources."""

    name = "ray"

    def __init__(self, address: str | None, max_concurrent: int, cpus: float, gpus: float) -> None:
        try:
            import ray
        except ImportError:
            raise TuneError(
                "tune: --backend ray needs Ray: pip install 'bdkd[ray]' (or use --backend local)"
            ) from None
        if address not in (None, "auto") and not _answers(address):
            raise TuneError(f"tune: no Ray cluster answers at --address {address}")
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else max(max_concurrent * cpus, 1),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise TuneError(
                    f"tune: Ray did not start at {address or 'this machine'}: {err}"
                ) from None
        self.slots, self.threads = max_concurrent, max(int(cpus), 1)
        self.remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_trial)

    def submit(self, spec: dict[str, Any]) -> Any:
        return self.remote.remote(spec)

    def wait(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for ref in ready:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as err:  # a task's error arrives wrapped; keep its own
                cause = getattr(err, "cause", None)
                out.append((ref, cause if isinstance(cause, BaseException) else err))
        return out

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


BACKENDS = ("auto", "local", "ray")


def make_backend(
    name: str,
    *,
    max_concurrent: int,
    cpus: float = 1,
    gpus: float = 0,
    address: str | None = None,
) -> Backend:
    """``local``, ``ray``, or ``auto`` (Ray when installed or an address is given, else
    local)."""
    if name not in BACKENDS:
        raise TuneError(f"tune: --backend must be one of {list(BACKENDS)}, got {name!r}")
    if max_concurrent < 1:
        raise TuneError(f"tune: --max-concurrent must be >= 1, got {max_concurrent}")
    if cpus <= 0 or gpus < 0:
        raise TuneError("tune: --cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if name == "auto":
        import importlib.util

        name = "ray" if address or importlib.util.find_spec("ray") else "local"
    if name == "ray":
        return RayBackend(address, max_concurrent, cpus, gpus)
    if address:
        raise TuneError("tune: --address is for --backend ray")
    return LocalBackend(max_concurrent, max(int(cpus), 1))


def _cache_order(pending: list[Trial]) -> None:
    """Offline trials sharing a teacher-logit cache wait for the first of them (which fills
    it); set in place."""
    fillers: dict[str, str] = {}
    for t in pending:
        if not t.offline:
            continue
        cache = str(t.config["train"]["teacher_cache"])
        filler = fillers.setdefault(cache, t.dir)
        if filler != t.dir and filler not in t.deps:
            t.deps.append(filler)


def execute(
    backend: Backend,
    trials: Iterable[Trial],
    more: Callable[[], list[Trial]],
    ledger: Path,
    log: Callable[[str], None],
) -> None:
    """Run ``trials`` and those ``more()`` adds as earlier ones finish, each once every run it
    depends on has finished; a finished run is skipped. A failing trial stops the tune
    (one line naming its directory); rerunning continues where it stopped."""
    seen: set[str] = set()
    pending: list[Trial] = []

    def add(new: Iterable[Trial]) -> None:
        for t in new:
            if t.dir not in seen:
                seen.add(t.dir)
                pending.append(t)

    add(trials)
    add(more())
    running: dict[Any, Trial] = {}
    try:
        while True:
            pending[:] = [t for t in pending if not finished(t.dir)]
            _cache_order(pending)
            for t in list(pending):
                if len(running) >= backend.slots:
                    break
                if not all(finished(d) for d in t.deps):
                    continue
                pending.remove(t)
                log(f"start {Path(t.dir).relative_to(Path(t.dir).parents[1])}")
                running[backend.submit(t.spec(getattr(backend, "threads", 1)))] = t
            if not running:
                before = len(seen)
                add(more())
                if len(seen) > before:
                    continue
                if pending:
                    stuck = [t.dir for t in pending][:3]
                    raise TuneError(f"tune: trials wait for runs that never finish: {stuck}")
                return
            for handle, result in backend.wait(list(running)):
                t = running.pop(handle)
                if isinstance(result, BaseException):
                    first = str(result).strip().splitlines()[0] if str(result).strip() else ""
                    raise TuneError(
                        f"tune: trial {t.dir} failed: {type(result).__name__}: {first} "
                        "(rerun the same command to continue)"
                    )
                if not result["reused"]:
                    log(f"done  {Path(t.dir).name} ({result['seconds']:.0f}s)")
                    append_jsonl(ledger, {**result, "time": time.time()})
            add(more())
    finally:
        for handle in list(running):
            if hasattr(handle, "cancel"):
                handle.cancel()
