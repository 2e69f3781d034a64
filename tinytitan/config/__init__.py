"""The job's configuration: the schema a user reads (schema.py), reading it from TOML and the command
line (parser.py), and every check, including those that depend on the ranks and devices (checks.py).

Importing it does not import torch or triton, so that the launcher's pre-check (`python -m
tinytitan.config`, see __main__.py) answers in well under a second.
"""

from tinytitan.config.checks import (
    accumulation_steps,
    check_consistency,
    check_devices,
    check_runtime,
    mesh_degrees,
    wsd_decay_steps,
)
from tinytitan.config.model_shape import describe_shape, model_args, shape_source, with_shape
from tinytitan.config.parser import help_text, load_config, parse_overrides, to_toml, wants_help
from tinytitan.config.schema import (
    ActivationCheckpoint,
    Checkpoint,
    Compile,
    ConfigError,
    Data,
    DataSource,
    Job,
    JobConfig,
    LRScheduler,
    Metrics,
    Model,
    Optimizer,
    Parallelism,
    Profiling,
    Training,
    Validation,
    option,
    toml_value,
)

__all__ = [
    "ActivationCheckpoint",
    "Checkpoint",
    "Compile",
    "ConfigError",
    "Data",
    "DataSource",
    "Job",
    "JobConfig",
    "LRScheduler",
    "Metrics",
    "Model",
    "Optimizer",
    "Parallelism",
    "Profiling",
    "Training",
    "Validation",
    "accumulation_steps",
    "check_consistency",
    "check_devices",
    "check_runtime",
    "help_text",
    "load_config",
    "mesh_degrees",
    "describe_shape",
    "model_args",
    "shape_source",
    "with_shape",
    "option",
    "parse_overrides",
    "to_toml",
    "toml_value",
    "wants_help",
    "wsd_decay_steps",
]
