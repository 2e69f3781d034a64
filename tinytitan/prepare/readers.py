"""The documents of an input, in each raw corpus layout (--format):

  slimpajama  {train,validation,test}/chunk*/*.jsonl.zst: one JSON object per line with "text" and
              "meta": {"redpajama_set_name": ...}
  starcoder   <language>/train-*.parquet, the code in column "content"
  jsonl       *.jsonl or *.jsonl.zst, the document in a "text" field per line
  txt         *.txt, one document per file (the .txt files of one folder make one input)
  chat        *.jsonl or *.jsonl.zst of conversations (conversations.py; only when named)
  auto        each file by its name: .parquet is starcoder, .txt is txt, .jsonl(.zst) is jsonl; a
              JSON line naming its RedPajama set is filtered by set as in slimpajama

A reader yields a Document for each document and a Skip for each line, row or file it does not
use, so nothing is dropped without being counted. A problem with a whole file (a truncated .zst, an
unreadable parquet) raises UserError instead: an input is prepared whole or not at all.

zstandard and pyarrow are imported only when a file needs them, so the trainer does not need them.
"""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import UserError
from tinytitan.prepare.inputs import Input

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
    yield from read_jsonl_lines(path, lambda line, where: _parse_line(line, path, where, sets, require_set))


def read_jsonl_lines(path: Path, parse) -> Iterator:
    """parse(line, "line N") of each line of a .jsonl or .jsonl.zst file; a truncated or unreadable
    file is one UserError."""
    number = 0
    try:
        for number, line in enumerate(_lines(path), 1):
            yield parse(line, f"line {number}")
    except _TruncatedZstd as error:
        raise UserError(
            f"{path}: the zstd stream is truncated or corrupt after line {number} ({error}): "
            "expected a complete .zst file (download it again)"
        ) from None
    except OSError as error:
        raise UserError(f"{path}: cannot read it after line {number} ({error})") from None


def json_object(line: bytes, path: Path, where: str) -> dict | Skip:
    """One line of a JSON Lines file as an object, or the Skip that says why not."""
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
    return record


def _parse_line(line: bytes, path: Path, where: str, sets: SetFilter, require_set: bool) -> Document | Skip:
    record = json_object(line, path, where)
    if isinstance(record, Skip):
        return record
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
