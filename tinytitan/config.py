"""Job configuration: nested dataclasses read from a TOML file, then from `--section.key=value`.

Later settings win: defaults, then the TOML file (`--job.config_file=...`), then the command line in
order. Every value is checked as it is applied, so an error names where it came from (the file or
the flag), the key, the value and what was expected. `--help` prints every key.
"""

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tinytitan.errors import UserError
from tinytitan.models.llama import FLAVORS


class ConfigError(UserError):
    pass


def option(default, doc: str, *, choices=None, min=None, above=None, max=None, below=None):
    """A config key: its default, a one-line doc, and the values it accepts."""
    limits = {"choices": choices, "min": min, "above": above, "max": max, "below": below}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, **limits})
    return field(default=default, metadata={"doc": doc, **limits})


@dataclass
class Job:
    config_file: str = option("", "TOML file applied before the command-line overrides")
    name: str = option("debug", "run name: the run folder is <dump_folder>/<name>")
    dump_folder: str = option("./outputs", "folder holding the run folders")
    description: str = option("", "free text printed at start")


@dataclass
class Model:
    flavor: str = option("debug", "named model size", choices=tuple(FLAVORS))
    kernels: str = option(
        "auto",
        "RMSNorm, rotary, SwiGLU and loss: fused Triton kernels or plain PyTorch; auto: triton on CUDA, torch on CPU",
        choices=("auto", "triton", "torch"),
    )


@dataclass
class Training:
    steps: int = option(200, "optimizer steps to train", min=1)
    seq_len: int = option(256, "tokens per sample (at most the flavor's max_seq_len)", min=2)
    global_batch_tokens: int = option(
        8192,
        "tokens per optimizer step over all ranks; gradient accumulation makes up what the ranks' micro-batches do not",
        min=1,
    )
    micro_batch_size: int = option(8, "sequences per rank in one forward/backward", min=1)
    max_norm: float = option(1.0, "clip gradients to this global L2 norm (0 disables clipping)", min=0.0)
    mixed_precision: str = option(
        "auto", "auto: bf16 autocast on CUDA, float32 on CPU", choices=("auto", "bf16", "fp32")
    )
    device: str = option("auto", "auto: CUDA when available, else CPU", choices=("auto", "cuda", "cpu"))
    seed: int = option(42, "seed of the initial weights and the data order", min=0)


@dataclass
class Optimizer:
    name: str = option("AdamW", "optimizer (fused kernel on CUDA)", choices=("AdamW",))
    lr: float = option(4e-4, "peak learning rate", above=0.0)
    beta1: float = option(0.9, "AdamW beta1", min=0.0, below=1.0)
    beta2: float = option(0.95, "AdamW beta2", min=0.0, below=1.0)
    eps: float = option(1e-8, "AdamW epsilon", above=0.0)
    weight_decay: float = option(0.1, "decoupled weight decay, applied to every parameter as TinyLlama did", min=0.0)


@dataclass
class LRScheduler:
    warmup_steps: int = option(2000, "steps of linear warmup to the peak lr", min=0)
    decay_type: str = option(
        "cosine", "decay from the peak to min_lr after warmup", choices=("cosine", "linear", "constant")
    )
    min_lr: float = option(4e-5, "learning rate at the last step", min=0.0)


@dataclass
class DataSource:
    name: str = option("", "name of the source in logs (val/<name>/loss)")
    path: str = option("", "folder prepared by scripts/prepare_data.py (it holds manifest.json)")
    weight: float = option(1.0, "share of the samples drawn from this source (weights are normalised)", above=0.0)


@dataclass
class Data:
    dataset: str = option(
        "builtin",
        "builtin: Python's docs and sources, 7:3 prose:code; sources: data.sources; "
        "synthetic: uniform random tokens (benchmarks)",
        choices=("builtin", "sources", "synthetic"),
    )
    sources: list[DataSource] = option([], "prepared data sources mixed by weight when dataset = 'sources'")
    tokenizer_path: str = option(
        "",
        "sentencepiece tokenizer.model the sources were prepared with; with 'builtin', empty trains one on the corpus",
    )
    cache_dir: str = option("~/.cache/tinytitan", "where the built-in corpus is prepared once and reused")
    num_workers: int = option(2, "loader worker processes per rank (0: load in the training process)", min=0)


@dataclass
class Validation:
    eval_freq: int = option(0, "evaluate on each source's validation split every this many steps (0: never)", min=0)
    eval_steps: int = option(10, "micro-batches per rank in one evaluation of each source", min=1)


@dataclass
class Metrics:
    log_freq: int = option(10, "log a line (and TensorBoard scalars) every this many steps", min=1)
    enable_tensorboard: bool = option(True, "write TensorBoard scalars under <run folder>/tb")


@dataclass
class Compile:
    enable: bool = option(False, "torch.compile each transformer block")


@dataclass
class Parallelism:
    data_parallel_shard_degree: int = option(-1, "ranks that shard the parameters (FSDP); -1: the rest", min=-1)
    data_parallel_replicate_degree: int = option(
        1, "groups of sharding ranks that replicate each other (HSDP); -1: the rest", min=-1
    )
    reshard_after_forward: bool = option(
        True, "free gathered parameters after forward (less memory, one more all-gather)"
    )


@dataclass
class ActivationCheckpoint:
    mode: str = option(
        "none",
        "recompute activations in backward: none, full (every block), or selective (every selective_every-th block)",
        choices=("none", "full", "selective"),
    )
    selective_every: int = option(2, "with mode = 'selective', checkpoint blocks 0, n, 2n, ...", min=1)


@dataclass
class Checkpoint:
    enable: bool = option(False, "save checkpoints to <run folder>/checkpoints/step-<N> and resume from the newest")
    interval: int = option(500, "save every this many steps (and at the last step)", min=1)
    keep_latest_k: int = option(3, "keep this many newest checkpoints (0: keep all)", min=0)
    initial_load_path: str = option(
        "", "model-only checkpoint to start from when the run folder has none (e.g. converted TinyLlama weights)"
    )
    async_save: bool = option(
        False,
        "save in the background (dcp.async_save): training goes on once the state is "
        "copied; the checkpoint is published at the first step after every rank has written it",
    )
    export_dtype: str = option(
        "",
        "at the end, also export model-only weights in this dtype to <run folder>/checkpoints/step-<N>-model",
        choices=("", "float32", "bfloat16", "float16"),
    )


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    data: Data = field(default_factory=Data)
    validation: Validation = field(default_factory=Validation)
    metrics: Metrics = field(default_factory=Metrics)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _table_type(f: dataclasses.Field):
    """The dataclass of the tables of a `list[SomeDataclass]` key, else None."""
    return typing.get_args(f.type)[0] if typing.get_origin(f.type) is list else None


def _type_name(f: dataclasses.Field) -> str:
    table = _table_type(f)
    return f"list[{table.__name__}]" if table else f.type.__name__


def _sections(config: JobConfig) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _key_field(config: JobConfig, key: str, source: str) -> tuple[Any, dataclasses.Field]:
    section_name, _, name = key.partition(".")
    sections = _sections(config)
    if section_name not in sections or not name:
        raise ConfigError(f"{source}: unknown section {section_name!r}: expected one of {', '.join(sections)}")
    section = sections[section_name]
    keys = {f.name: f for f in dataclasses.fields(section)}
    if name not in keys:
        raise ConfigError(
            f"{source}: unknown key {key!r}: expected one of {', '.join(section_name + '.' + k for k in keys)}"
        )
    return section, keys[name]


def _expected(f: dataclasses.Field) -> str:
    table = _table_type(f)
    if table:
        keys = ", ".join(f"{g.name} ({_expected(g)})" for g in dataclasses.fields(table))
        return f"an array of tables with the keys {keys}"
    meta, words = f.metadata, [_TYPE_NAMES[f.type]]
    if meta["choices"]:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    for limit, sign in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<")):
        if meta[limit] is not None:
            words.append(f"{sign} {meta[limit]}")
    return " ".join(words)


def _check_range(value, f: dataclasses.Field) -> bool:
    meta = f.metadata
    return not (
        (isinstance(value, float) and not math.isfinite(value))
        or (meta["choices"] and value not in meta["choices"])
        or (meta["min"] is not None and value < meta["min"])
        or (meta["above"] is not None and value <= meta["above"])
        or (meta["max"] is not None and value > meta["max"])
        or (meta["below"] is not None and value >= meta["below"])
    )


def _from_toml(value, f: dataclasses.Field):
    """The TOML value as the field's type, or None when it has another type."""
    if f.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is f.type:
        return value
    return None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _from_text(text: str, f: dataclasses.Field):
    """The command-line text as the field's type, or None when it does not parse."""
    if f.type is str:
        return text
    if f.type is bool:
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    try:
        return f.type(text)
    except ValueError:
        return None


def _convert(raw, f: dataclasses.Field, key: str, source: str, parse):
    """`raw` (TOML value or command-line text) as the value of key `f`, checked; else a ConfigError."""
    if _table_type(f):
        return _convert_tables(raw, f, key, source)
    value = parse(raw, f)
    if value is None or not _check_range(value, f):
        raise ConfigError(f"{source}: {key} = {_toml_value(raw)}: expected {_expected(f)}")
    return value


def _convert_tables(raw, f: dataclasses.Field, key: str, source: str) -> list:
    """[[section.key]] tables from TOML, or an inline TOML array of tables on the command line."""
    if isinstance(raw, str):
        try:
            raw = tomllib.loads(f"value = {raw}")["value"]
        except tomllib.TOMLDecodeError:
            raw = None
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        raise ConfigError(f"{source}: {key}: expected {_expected(f)}")
    table_type, items = _table_type(f), []
    for index, table in enumerate(raw):
        fields, item = {g.name: g for g in dataclasses.fields(table_type)}, table_type()
        for name, value in table.items():
            item_key = f"{key}[{index}].{name}"
            if name not in fields:
                raise ConfigError(f"{source}: unknown key {item_key!r}: expected one of {', '.join(fields)}")
            setattr(item, name, _convert(value, fields[name], item_key, source, _from_toml))
        items.append(item)
    return items


def _apply(config: JobConfig, key: str, raw, source: str, parse) -> None:
    section, f = _key_field(config, key, source)
    setattr(section, f.name, _convert(raw, f, key, source, parse))


def _read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"--job.config_file={path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--job.config_file={path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _apply_toml(config: JobConfig, path: str) -> None:
    for section_name, table in _read_toml(path).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: top-level key {section_name!r}: expected a [section] table")
        for name, value in table.items():
            key = f"{section_name}.{name}"
            if isinstance(value, dict):
                raise ConfigError(f"{path}: {key}: expected a value, got a table")
            if section_name == "job" and name == "config_file":
                continue  # a saved config names the file it came from; it does not chain to it
            _apply(config, key, value, path, _from_toml)


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """`--section.key=value` or `--section.key value` pairs, in order; a bare boolean flag means true."""
    overrides, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"argument {arg!r}: expected --section.key=value (see --help)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 1
        else:
            key, value = arg[2:], "true"
        overrides.append((key, value))
        i += 1
    return overrides


def load_config(argv: list[str]) -> JobConfig:
    """Defaults, then the TOML file named by --job.config_file, then each override in order."""
    overrides = parse_overrides(argv)
    config = JobConfig()
    config_files = [value for key, value in overrides if key == "job.config_file"]
    if config_files and config_files[-1]:
        _apply_toml(config, config_files[-1])
    for key, value in overrides:
        _apply(config, key, value, "command line", _from_text)
    _check_consistency(config)
    return config


def _check_consistency(config: JobConfig) -> None:
    for key in ("data_parallel_shard_degree", "data_parallel_replicate_degree"):
        if getattr(config.parallelism, key) == 0:
            raise ConfigError(f"parallelism.{key} = 0: expected a positive degree or -1")
    flavor = FLAVORS[config.model.flavor]
    if config.training.seq_len > flavor.max_seq_len:
        raise ConfigError(
            f"training.seq_len = {config.training.seq_len}: expected at most {flavor.max_seq_len}, "
            f"the max_seq_len of flavor {config.model.flavor!r}"
        )
    if config.lr_scheduler.min_lr > config.optimizer.lr:
        raise ConfigError(
            f"lr_scheduler.min_lr = {config.lr_scheduler.min_lr}: expected at most optimizer.lr = {config.optimizer.lr}"
        )
    _check_sources(config.data)


def _check_sources(data: "Data") -> None:
    if data.dataset != "sources":
        return
    if not data.sources:
        raise ConfigError(
            "data.sources is empty: expected at least one [[data.sources]] table when data.dataset = 'sources'"
        )
    names = [source.name for source in data.sources]
    for index, source in enumerate(data.sources):
        if not source.name or not source.path:
            raise ConfigError(
                f"data.sources[{index}]: name = {_toml_value(source.name)}, path = {_toml_value(source.path)}: "
                "expected both to be set"
            )
        if source.name in names[:index]:
            raise ConfigError(f"data.sources[{index}].name = {_toml_value(source.name)}: expected names to be unique")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return repr(value)


def to_toml(config: JobConfig) -> str:
    """The whole resolved config as TOML, loadable again with --job.config_file."""
    lines = []
    for section_name, section in _sections(config).items():
        lines.append(f"[{section_name}]")
        scalars = [f for f in dataclasses.fields(section) if not _table_type(f)]
        lines.extend(f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in scalars)
        lines.append("")
        for f in dataclasses.fields(section):  # arrays of tables come after the section's own keys
            for item in getattr(section, f.name) if _table_type(f) else []:
                lines.append(f"[[{section_name}.{f.name}]]")
                lines.extend(f"{g.name} = {_toml_value(getattr(item, g.name))}" for g in dataclasses.fields(item))
                lines.append("")
    return "\n".join(lines)


def help_text() -> str:
    lines = [
        "usage: python -m tinytitan.train [--job.config_file=FILE.toml] [--section.key=value ...]",
        "",
        "Defaults, then the TOML file, then the overrides in order (later wins). Keys:",
    ]
    for section_name, section in _sections(JobConfig()).items():
        lines.append(f"\n[{section_name}]")
        for f in dataclasses.fields(section):
            default = getattr(section, f.name)
            default = "[]" if _table_type(f) else _toml_value(default)
            expected = _expected(f)
            accepts = "" if expected == _TYPE_NAMES.get(f.type) else f"; expected {expected}"
            lines.append(
                f"  --{section_name}.{f.name} ({_type_name(f)}, default {default}): {f.metadata['doc']}{accepts}"
            )
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def _check(argv: list[str]) -> int:
    """`python -m tinytitan.config ARGS`: validate a job's config without running it."""
    if wants_help(argv):
        print(help_text())
    else:
        load_config(argv)
    return 0


if __name__ == "__main__":
    from tinytitan.errors import run_entry_point

    run_entry_point(_check)
