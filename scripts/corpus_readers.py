"""The raw corpora that scripts/prepare_data.py reads: which files are inputs, and their documents.

Layouts (--format):
  slimpajama  {train,validation,test}/chunk*/*.jsonl.zst: one JSON object per line with "text" and
              "meta": {"redpajama_set_name": ...}
  starcoder   <language>/train-*.parquet, the code in column "content"
  jsonl       *.jsonl or *.jsonl.zst, the document in a "text" field per line
  txt         *.txt, one document per file (the .txt files of one folder make one input)
  auto        each file by its name: .parquet is starcoder, .txt is txt, .jsonl(.zst) is jsonl; a
              JSON line naming its RedPajama set is filtered by set as in slimpajama

A reader yields a Document for each document and a Skip for each line, row or file it does not
use, so nothing is dropped without being counted. A problem with a whole file (a truncated .zst, an
unreadable parquet) raises UserError instead: an input is prepared whole or not at all.

zstandard and pyarrow are imported only when a file needs them, so the trainer does not need them.
"""

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import UserError

FORMATS = ("auto", "slimpajama", "starcoder", "jsonl", "txt")
# File names each format reads when walking a folder (auto: all of them).
SUFFIXES = {
    "slimpajama": (".jsonl.zst", ".jsonl"),
    "jsonl": (".jsonl.zst", ".jsonl"),
    "starcoder": (".parquet",),
    "txt": (".txt",),
}
REDPAJAMA_SETS = (
    "RedPajamaArXiv",
    "RedPajamaBook",
    "RedPajamaC4",
    "RedPajamaCommonCrawl",
    "RedPajamaGithub",
    "RedPajamaStackExchange",
    "RedPajamaWikipedia",
)
STARCODER_COLUMN = "content"
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Input:
    """One unit of preparation: prepared whole, resumed whole, with shards of its own."""

    name: str  # its path from above the folder given, e.g. "train/chunk1/example_train_0.jsonl.zst"
    paths: tuple[Path, ...]  # one file; for txt, the .txt files of one folder
    format: str  # slimpajama, starcoder, jsonl or txt

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path in self.paths)

    @property
    def language(self) -> str:
        """StarCoderData keeps each language in a folder of its name."""
        return self.paths[0].parent.name


@dataclass(frozen=True)
class SetFilter:
    """Which RedPajama sets of SlimPajama to keep."""

    include: frozenset[str] | None = None  # None: every set
    exclude: frozenset[str] = frozenset({"RedPajamaGithub"})  # code comes from StarCoderData instead

    def keeps(self, set_name: str) -> bool:
        return (self.include is None or set_name in self.include) and set_name not in self.exclude


@dataclass(frozen=True)
class Document:
    text: str
    where: str  # "line 12", "row 5" or the .txt file's name: names it, and keys the holdout hash
    group: str  # the SlimPajama set, the StarCoderData language, else the format
    utf8_bytes: int = 0


@dataclass(frozen=True)
class Skip:
    reason: str  # the key it is counted under, e.g. "invalid JSON"
    file: Path
    where: str  # "line 12", "row 5", or "" for a whole file
    message: str  # what was wrong and what was expected
    problem: bool = True  # bad input (an error with --strict), not a filter's choice

    def location(self) -> str:
        return f"{self.file} {self.where}".strip()


# ---- finding the inputs ----


def find_inputs(arguments: list[str], format: str) -> list[Input]:
    """The inputs named by files, folders and glob patterns, sorted by name, each file once."""
    named: dict[str, tuple[Path, str]] = {}  # absolute path -> (path, name)
    for argument in arguments:
        for path, name in _expand(argument, format):
            named.setdefault(os.path.abspath(path), (path, name))  # abspath: symlinks (HF cache) keep their names
    files = sorted(named.values(), key=lambda item: item[1])
    inputs, txt_folders = [], {}
    for path, name in files:
        file_format = format if format != "auto" else _format_of(path)
        if file_format == "txt":  # one input per folder: a document per file is too small a unit
            txt_folders.setdefault(str(Path(name).parent), []).append(path)
        else:
            inputs.append(Input(name, (path,), file_format))
    inputs += [Input(folder, tuple(paths), "txt") for folder, paths in txt_folders.items()]
    _check_unique_names(inputs)
    return sorted(inputs, key=lambda i: i.name)


def _expand(argument: str, format: str) -> list[tuple[Path, str]]:
    """(file, name) pairs of one argument; a name is the path from the parent of the folder given
    (or of a pattern's fixed folder, or of a file's own folder), so `data/` and `data/*.jsonl`
    give the same names."""
    path = Path(argument).expanduser()
    if any(character in argument for character in "*?["):
        root = _fixed_folder(path)
        matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
        if not matches:
            raise UserError(f"input {argument!r}: no files match this pattern")
        files = [f for m in matches for f in (_walk(m, format) if m.is_dir() else [m]) if _readable_as(f, format)]
        what = "matches"
    elif path.is_dir():
        root, files, what = path, _walk(path, format), "holds"
    elif path.exists():
        root, files, what = path.parent, [path], ""
        if format == "auto":
            _format_of(path)  # a clear error for a name that says nothing of its format
    else:
        raise UserError(f"input {argument!r}: no such file or folder")
    if not files:
        suffixes = _suffixes(format)
        listed = ", ".join(suffixes[:-1]) + " or " + suffixes[-1] if len(suffixes) > 1 else suffixes[0]
        raise UserError(f"input {argument!r}: {what} no {listed} files")
    base = Path(os.path.abspath(root)).parent
    return [(f, Path(os.path.abspath(f)).relative_to(base).as_posix()) for f in files]


def _fixed_folder(pattern: Path) -> Path:
    fixed = []
    for part in pattern.parts:
        if any(character in part for character in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk(folder: Path, format: str) -> list[Path]:
    """The files under `folder` that `format` reads, leaving out hidden ones (.git, .cache)."""
    found = []
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(root) / f for f in sorted(files) if not f.startswith(".") and _readable_as(Path(f), format)]
    return found


def _suffixes(format: str) -> tuple[str, ...]:
    if format == "auto":
        return tuple(dict.fromkeys(s for suffixes in SUFFIXES.values() for s in suffixes))
    return SUFFIXES[format]


def _readable_as(path: Path, format: str) -> bool:
    return path.name.endswith(_suffixes(format))


def _format_of(path: Path) -> str:
    if path.name.endswith((".jsonl", ".jsonl.zst")):
        return "jsonl"
    if path.name.endswith(".parquet"):
        return "starcoder"
    if path.name.endswith(".txt"):
        return "txt"
    raise UserError(
        f"input {str(path)!r}: cannot tell its format from its name: expected "
        f"{', '.join(_suffixes('auto'))}, or give --format"
    )


def only_languages(inputs: list[Input], languages: set[str]) -> list[Input]:
    """StarCoderData inputs of the chosen languages (inputs of other formats stay)."""
    code = [i for i in inputs if i.format == "starcoder"]
    found = {i.language for i in code}
    if missing := sorted(languages - found):
        raise UserError(
            f"--languages: no parquet files for {', '.join(missing)}: expected a folder <language>/ of "
            f"train-*.parquet files (found: {', '.join(sorted(found)) or 'none'})"
        )
    return [i for i in inputs if i.format != "starcoder" or i.language in languages]


def _check_unique_names(inputs: list[Input]) -> None:
    seen = {}
    for item in inputs:
        if item.name in seen:
            raise UserError(
                f"inputs {seen[item.name]} and {item.paths[0]} are both named {item.name!r}: "
                "expected distinct names (give their parent folders instead)"
            )
        seen[item.name] = item.paths[0]


# ---- reading documents ----


def read_documents(item: Input, sets: SetFilter) -> Iterator[Document | Skip]:
    """The documents of an input in file order, and a Skip for each thing not used."""
    if item.format == "starcoder":
        records = _read_parquet(item.paths[0])
    elif item.format == "txt":
        records = _read_txt(item.paths)
    else:
        records = _read_jsonl(item.paths[0], sets, require_set=item.format == "slimpajama")
    for record in records:
        yield _checked(record, item.paths[0]) if isinstance(record, Document) and item.format != "txt" else record


def _checked(document: Document, file: Path) -> Document | Skip:
    """Empty documents hold no tokens worth a <s></s>; text the tokenizer cannot take is skipped.
    (A .txt input's documents come checked: its documents are files of their own.)"""
    if not document.text:
        return Skip("empty text", file, document.where, "empty document", problem=False)
    try:
        size = len(document.text.encode("utf-8"))
    except UnicodeEncodeError as error:  # a lone surrogate escaped in JSON ("\ud800")
        return Skip(
            "invalid Unicode",
            file,
            document.where,
            f"text holds {error.object[error.start : error.end]!r} ({error.reason}): expected valid Unicode text",
        )
    return Document(document.text, document.where, document.group, size)


def _read_jsonl(path: Path, sets: SetFilter, require_set: bool) -> Iterator[Document | Skip]:
    number = 0
    try:
        for number, line in enumerate(_lines(path), 1):
            yield _parse_line(line, path, f"line {number}", sets, require_set)
    except _TruncatedZstd as error:
        raise UserError(
            f"{path}: the zstd stream is truncated or corrupt after line {number} ({error}): "
            "expected a complete .zst file (download it again)"
        ) from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it after line {number} ({error})") from None


def _parse_line(line: bytes, path: Path, where: str, sets: SetFilter, require_set: bool) -> Document | Skip:
    if not line.strip():
        return Skip("blank line", path, where, "blank line", problem=False)
    try:
        record = json.loads(line)
    except UnicodeDecodeError as error:
        return Skip("invalid UTF-8", path, where, f"invalid UTF-8 at byte {error.start}: expected UTF-8 JSON")
    except json.JSONDecodeError as error:
        return Skip(
            "invalid JSON",
            path,
            where,
            f"invalid JSON ({error.msg} at column {error.colno}): expected one JSON object per line",
        )
    if not isinstance(record, dict):
        return Skip("invalid JSON", path, where, f"a JSON {type(record).__name__}: expected one JSON object per line")
    text = record.get("text")
    if not isinstance(text, str):
        found = "no field 'text'" if text is None else f"'text' is a {type(text).__name__}"
        return Skip("missing text", path, where, f"{found}: expected the document as a string in 'text'")
    meta = record.get("meta")
    set_name = meta.get("redpajama_set_name") if isinstance(meta, dict) else None
    if not isinstance(set_name, str):
        if require_set:
            return Skip(
                "missing set name",
                path,
                where,
                "no string field meta.redpajama_set_name: expected SlimPajama's lines (or --format jsonl)",
            )
        return Document(text, where, "jsonl")
    if not sets.keeps(set_name):
        return Skip(f"set {set_name}", path, where, f"set {set_name} left out", problem=False)
    return Document(text, where, set_name)


class _TruncatedZstd(Exception):
    pass


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a .jsonl or .jsonl.zst file, as bytes."""
    with open(path, "rb") as file:
        if not path.name.endswith(".zst"):
            yield from file
            return
        pending = b""
        for chunk in _zstd_chunks(file):
            *lines, pending = (pending + chunk).split(b"\n")
            yield from lines
        if pending:
            yield pending


def _zstd_chunks(file) -> Iterator[bytes]:
    """Decompressed data, frame after frame. zstandard's stream reader ends quietly at a truncated
    frame, so the frames are followed here, and an unfinished one is an error."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, frame_started = decompressor.decompressobj(), False
    try:
        while data := file.read(_READ_BYTES):
            while data:
                frame_started = True
                yield frame.decompress(data)
                data = b""
                if frame.eof:  # the frame is done; what follows it belongs to the next one
                    data = frame.unused_data
                    frame, frame_started = decompressor.decompressobj(), False
    except zstandard.ZstdError as error:
        raise _TruncatedZstd(str(error)) from None
    if frame_started:
        raise _TruncatedZstd("the last frame ends early")


def _read_parquet(path: Path) -> Iterator[Document | Skip]:
    import pyarrow
    import pyarrow.parquet as parquet

    expected = f"expected StarCoderData's <language>/train-*.parquet with the code in column {STARCODER_COLUMN!r}"
    try:
        table = parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise UserError(f"{path}: not a readable parquet file ({error}): {expected}") from None
    schema = table.schema_arrow
    if STARCODER_COLUMN not in schema.names:
        raise UserError(f"{path}: no column {STARCODER_COLUMN!r} (columns: {', '.join(schema.names)}): {expected}")
    column_type = schema.field(STARCODER_COLUMN).type
    if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
        raise UserError(f"{path}: column {STARCODER_COLUMN!r} holds {column_type}: {expected} as strings")
    language, row = path.parent.name, 0
    try:
        for batch in table.iter_batches(batch_size=1024, columns=[STARCODER_COLUMN]):
            for text in batch.column(0).to_pylist():
                if text is None:
                    yield Skip(
                        "missing content",
                        path,
                        f"row {row}",
                        f"null {STARCODER_COLUMN!r}: expected the code as a string",
                    )
                else:
                    yield Document(text, f"row {row}", language)
                row += 1
    except (pyarrow.ArrowException, OSError) as error:
        raise UserError(f"{path}: cannot read it after row {row} ({error}): {expected}") from None


def _read_txt(paths: tuple[Path, ...]) -> Iterator[Document | Skip]:
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise UserError(f"{path}: cannot read it ({error.strerror})") from None
        try:
            text = raw.decode("utf-8")  # strict UTF-8 holds no lone surrogates
        except UnicodeDecodeError as error:
            yield Skip("invalid UTF-8", path, "", f"invalid UTF-8 at byte {error.start}: expected a UTF-8 text file")
            continue
        if text:
            yield Document(text, path.name, "txt", len(raw))
        else:
            yield Skip("empty text", path, "", "empty document", problem=False)
