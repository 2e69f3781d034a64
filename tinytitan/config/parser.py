"""Reading the job's configuration: defaults, then a TOML file (`--job.config_file=...`), then
`--section.key=value` from the command line; and writing it back (`to_toml`) or describing it (`help_text`).

Later settings win: defaults, then the TOML file, then the command line in order. Every value is
checked as it is applied, so an error names where it came from (the file or the flag), the key, the
value and what was expected; the cross-key checks (checks.py) run on the result.
"""

import dataclasses
import math
import sys
import typing
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from tinytitan.config.checks import check_consistency
from tinytitan.config.schedules import SCHEDULE_EXPECTED, parse_schedule
from tinytitan.config.schema import INT64_MAX, ConfigError, JobConfig, toml_value

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


def _expected(f: dataclasses.Field, value=None) -> str:
    """What key `f` accepts. Two limits are named only to the `value` they refuse: that a number is
    finite, and the int64 limit every integer key has."""
    table = _table_type(f)
    if table:
        keys = ", ".join(f"{g.name} ({_expected(g)})" for g in dataclasses.fields(table))
        return f"an array of tables with the keys {keys}"
    if f.metadata["schedule"]:
        return f"{_expected_value(f, None if isinstance(value, list) else value)}, or a schedule {SCHEDULE_EXPECTED}"
    return _expected_value(f, value)


def _expected_value(f: dataclasses.Field, value) -> str:
    """What a key of one value accepts (a number, a string, one of the choices)."""
    meta, limits = f.metadata, []
    int64_limit = type(value) is int and abs(value) > INT64_MAX
    finite = "finite " if isinstance(value, float) and not math.isfinite(value) else ""
    if meta["choices"]:
        aliases = [alias for choice in meta["choices"] for alias, value in meta["aliases"].items() if value == choice]
        also = f" (or {', '.join(repr(a) for a in aliases)})" if aliases else ""
        return "one of " + ", ".join(repr(c) for c in meta["choices"]) + also
    for limit, sign in (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<")):
        if meta[limit] is not None and (int64_limit or not (limit == "max" and meta[limit] == INT64_MAX)):
            limits.append(f"{sign} {meta[limit]}")
    return " ".join([_TYPE_NAMES[f.type].replace("a ", "a " + finite, 1), " and ".join(limits)]).strip()


def _check_range(value, f: dataclasses.Field) -> bool:
    meta = f.metadata
    if isinstance(value, list):  # a schedule, checked point by point as it was parsed
        return meta["schedule"]
    return not (
        (isinstance(value, float) and not math.isfinite(value))
        or (meta["choices"] and value not in meta["choices"])
        or (meta["min"] is not None and value < meta["min"])
        or (meta["above"] is not None and value <= meta["above"])
        or (meta["max"] is not None and value > meta["max"])
        or (meta["below"] is not None and value >= meta["below"])
    )


def _from_toml(value, f: dataclasses.Field):
    """The TOML value as the field's type (or a schedule, where the key takes one), or None when it has another type."""
    if f.metadata["schedule"] and isinstance(value, list):
        return parse_schedule(value)
    if f.type is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return None
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
    if not isinstance(value, list):
        value = f.metadata["aliases"].get(value, value)  # another spelling of an accepted value: stored as that value
    if value is None or not _check_range(value, f):
        raise ConfigError(f"{source}: {key} = {toml_value(raw)}: expected {_expected(f, value)}")
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


def parse_overrides(argv: list[str]) -> list[tuple[str, str | None]]:
    """`--section.key=value` or `--section.key value` pairs, in order; a bare flag (`--section.key`
    alone) has the value None, which only a boolean key accepts (as true)."""
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
            key, value = arg[2:], None
        overrides.append((key, value))
        i += 1
    return overrides


def _bare_flag_value(config: JobConfig, key: str) -> str:
    """A bare `--section.key` switches a boolean on; any other key needs its value, rather than
    silently becoming the string "true" (a run folder called outputs/true, say)."""
    _, f = _key_field(config, key, "command line")
    if f.type is not bool:
        raise ConfigError(f"command line: --{key} has no value: expected --{key}=VALUE ({_expected(f)})")
    return "true"


def load_config(argv: list[str]) -> JobConfig:
    """Defaults, then the TOML file named by --job.config_file, then each override in order."""
    overrides = parse_overrides(argv)
    config = JobConfig()
    config_files = [value for key, value in overrides if key == "job.config_file"]
    if config_files and config_files[-1]:
        _apply_toml(config, config_files[-1])
    for key, value in overrides:
        _apply(config, key, _bare_flag_value(config, key) if value is None else value, "command line", _from_text)
    check_consistency(config)
    return config


def to_toml(config: JobConfig) -> str:
    """The whole resolved config as TOML, loadable again with --job.config_file."""
    lines = []
    for section_name, section in _sections(config).items():
        lines.append(f"[{section_name}]")
        scalars = [f for f in dataclasses.fields(section) if not _table_type(f)]
        lines.extend(f"{f.name} = {toml_value(getattr(section, f.name))}" for f in scalars)
        lines.append("")
        for f in dataclasses.fields(section):  # arrays of tables come after the section's own keys
            for item in getattr(section, f.name) if _table_type(f) else []:
                lines.append(f"[[{section_name}.{f.name}]]")
                lines.extend(f"{g.name} = {toml_value(getattr(item, g.name))}" for g in dataclasses.fields(item))
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
            default = "[]" if _table_type(f) else toml_value(default)
            expected = _expected(f)
            accepts = "" if expected == _TYPE_NAMES.get(f.type) else f"; expected {expected}"
            lines.append(
                f"  --{section_name}.{f.name} ({_type_name(f)}, default {default}): {f.metadata['doc']}{accepts}"
            )
    return "\n".join(lines)


def wants_help(argv: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)
