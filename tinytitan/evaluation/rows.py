"""A task's rows from a local file, as the Hugging Face datasets publish them: JSON Lines (`.jsonl`,
`.json`, one object a line) or parquet. Each row knows where it came from (file:line, or file row N
for parquet), so that a missing field or a wrong type is one line naming the file, the row and the
field. Nothing here imports torch: the config checks read the task names beside it."""

import json
from pathlib import Path

from tinytitan.errors import UserError, one_line

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


class Row:
    """One published row and where it came from; the typed getters refuse what the task cannot use."""

    def __init__(self, values: dict, where: str):
        self.values, self.where = values, where

    def _field(self, name: str):
        if name not in self.values:
            raise UserError(f"{self.where}: no field {name!r} (the row has {', '.join(map(repr, self.values))})")
        return self.values[name]

    def refuse(self, name: str, expected: str) -> UserError:
        quoted = one_line(json.dumps(self.values[name]), 80)
        return UserError(f"{self.where}: field {name!r} = {quoted}: expected {expected}")

    def text(self, name: str) -> str:
        value = self._field(name)
        if not isinstance(value, str):
            raise self.refuse(name, "a string")
        return value

    def texts(self, name: str) -> list[str]:
        value = self._field(name)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.refuse(name, "a non-empty list of strings")
        return value

    def record(self, name: str) -> "Row":
        """A nested object (ARC's and OpenBookQA's `choices`), whose fields name it in messages."""
        value = self._field(name)
        if not isinstance(value, dict):
            raise self.refuse(name, "an object")
        return Row(value, f"{self.where}: field {name!r}")

    def index(self, name: str, count: int, first: int = 0) -> int:
        """A label naming one of `count` choices, numbered from `first`: an integer, or its decimal
        string (HellaSwag's and WinoGrande's labels are strings); returned counted from 0."""
        value = self._field(name)
        number = value if type(value) is int else int(value) if isinstance(value, str) and value.isdigit() else None
        if number is None or not first <= number < first + count:
            raise self.refuse(name, f"a choice number from {first} to {first + count - 1}")
        return number - first

    def one_of(self, name: str, options: list[str]) -> int:
        """A label given as one of `options` (ARC's answerKey among its choice labels); its position."""
        value = self.text(name)
        if value not in options:
            raise self.refuse(name, f"one of {', '.join(map(repr, options))}")
        return options.index(value)


def read_rows(path: str | Path, limit: int = 0) -> list[Row]:
    """The file's rows in order (the first `limit` of them, when above 0)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"task file {path}: no such file (expected JSON Lines or parquet rows)")
    if path.suffix in JSON_SUFFIXES:
        rows = _json_lines(path, limit)
    elif path.suffix in PARQUET_SUFFIXES:
        rows = _parquet_rows(path, limit)
    else:
        raise UserError(f"task file {path}: expected a .jsonl, .json or .parquet file")
    if not rows:
        raise UserError(f"task file {path}: no rows")
    return rows


def _json_lines(path: Path, limit: int) -> list[Row]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not a JSON object ({error})") from None
            if not isinstance(values, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, one per line")
            rows.append(Row(values, f"{path}:{number}"))
            if len(rows) == limit:
                break
    return rows


def _parquet_rows(path: Path, limit: int) -> list[Row]:
    try:
        import pyarrow.parquet
    except ImportError:
        raise UserError(f"task file {path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowException) as error:
        raise UserError(f"task file {path}: not a readable parquet file ({one_line(error, 200)})") from None
    table = table.slice(0, limit) if limit else table
    return [Row(values, f"{path} row {number}") for number, values in enumerate(table.to_pylist(), 1)]
