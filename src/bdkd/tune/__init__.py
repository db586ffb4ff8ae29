"""``bdkd tune``: which method, at which setting, on the user's own data — chosen fairly.

Every entry (a method, or a named variant with its own space) gets the same budget of
settings from its search space (:mod:`bdkd.tune.spaces`), all trained on the selection
seed and chosen on its validation split; the chosen settings are trained on the report
seeds, and the report (:mod:`bdkd.tune.report`) compares them with paired intervals. Trials
are ordinary bdkd runs (:mod:`bdkd.tune.trials`) on a local process pool or on Ray
(:mod:`bdkd.tune.backends`); rerunning a tune continues it.
"""

from bdkd.tune.backends import BACKENDS, TuneError, make_backend
from bdkd.tune.report import best_entry, comparisons, reading, write_report
from bdkd.tune.run import SELECTION_SEED, TuneOptions, plan_check, run_tune
from bdkd.tune.select import SELECT, Sweep, val_metrics
from bdkd.tune.spaces import DEFAULT_SPACES, Space, SpaceError, default_space, read_spaces

__all__ = [
    "BACKENDS",
    "DEFAULT_SPACES",
    "SELECT",
    "SELECTION_SEED",
    "Space",
    "SpaceError",
    "Sweep",
    "TuneError",
    "TuneOptions",
    "best_entry",
    "comparisons",
    "default_space",
    "make_backend",
    "plan_check",
    "read_spaces",
    "reading",
    "run_tune",
    "val_metrics",
    "write_report",
]
