"""Typed run configuration: YAML in, validated dataclasses out, dotted overrides.

Unknown keys, wrong types, values out of range and non-finite numbers are errors that name
the key and what is allowed. A config may start from others with ``base: other.yaml`` (a
path relative to the file, or a list of them); its own keys are merged over theirs. The
resolved config is saved with every run.

YAML is read with the YAML 1.2 rule for numbers, so ``lr: 1e-3`` is the float 0.001 (YAML
1.1, PyYAML's default, reads it as a string), and dates stay text.

The schema is plain dataclasses; :func:`spec` attaches a range or a set of choices to a
field, and :func:`build_section` validates a mapping into any such dataclass (the LLM side
uses it for its own sections).
"""

from bdkd.config.files import (
    apply_overrides,
    dump_config,
    load_config,
    parse_yaml,
    read_yaml,
    with_bases,
)
from bdkd.config.schema import (
    MAX_BINS,
    MAX_SEED,
    SCHEDULES,
    SELECTION_METRICS,
    TRACKERS,
    Config,
    ConfigError,
    DataConfig,
    EarlyStopConfig,
    EvalConfig,
    NetworkConfig,
    OptimConfig,
    OutputConfig,
    ScheduleConfig,
    TrainConfig,
    build_section,
    check_range,
    spec,
)
from bdkd.config.validation import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_VALUES,
    check_bounded,
    check_names,
    check_run_name,
    check_trusted,
    config_differences,
    validate,
)

__all__ = [
    "MAX_BINS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_VALUES",
    "MAX_SEED",
    "SCHEDULES",
    "SELECTION_METRICS",
    "TRACKERS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EarlyStopConfig",
    "EvalConfig",
    "NetworkConfig",
    "OptimConfig",
    "OutputConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "build_section",
    "check_bounded",
    "check_names",
    "check_range",
    "check_run_name",
    "check_trusted",
    "config_differences",
    "dump_config",
    "load_config",
    "parse_yaml",
    "read_yaml",
    "spec",
    "validate",
    "with_bases",
]
