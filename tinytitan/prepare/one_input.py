"""One input into its own shards, and the completion record written when they are whole.

An input's shards are named <split>-<key>-NNNNN.bin, its key unique to its name; the record
done/<key>.json is written last, so an input with a record is complete, and one without is
prepared again from the start (its leftover shards removed first).
"""

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tinytitan.chat_templates import encode_chat
from tinytitan.data.shards import ShardWriter
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.files import atomic_write_json
from tinytitan.prepare.conversations import Conversation, read_conversations
from tinytitan.prepare.inputs import Input
from tinytitan.prepare.options import VALIDATION, Options
from tinytitan.prepare.readers import Document, Skip, read_documents

DONE_FOLDER = "done"  # per-input completion records
REPORT_EVERY_S = 0.5  # how often a worker reports its counts


def input_key(name: str) -> str:
    """A file-name-safe, unique key of an input: readable start, hash of the whole name."""
    stem = re.sub(r"(\.jsonl|\.zst|\.parquet|\.txt)+$", "", name)
    readable = re.sub(r"[^A-Za-z0-9_.]+", "_", stem.replace("/", "."))[-60:].strip("._") or "input"
    return f"{readable}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def held_out(name: str, where: str, fraction: float) -> bool:
    """Whether a document goes to validation: a hash of its input's name and its place in it, so the
    choice is the same on every run and machine, whatever the worker count."""
    if fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{name}\n{where}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2**64


def prepare_input(item: Input, options: Options, tokenizer: Tokenizer, report) -> dict:
    """Tokenize one input into its own shards, then write its completion record (last, atomically).
    `report(documents=, tokens=, MB=)` is called with counts now and then."""
    key = input_key(item.name)
    remove_shards_of(options.output, key)  # left by an interrupted run
    writers: dict[str, ShardWriter] = {}
    tally = Tally(report)
    try:
        for document in _documents(item, options, tokenizer):
            encoded = _encode(document, item, options, tokenizer)
            if isinstance(encoded, Skip):
                tally.leave_out(encoded, options.strict)
                continue
            ids, trained = encoded
            split = VALIDATION if held_out(item.name, document.where, options.holdout_fraction) else options.split
            if split not in writers:
                writers[split] = ShardWriter(
                    options.output, f"{split}-{key}", tokenizer.vocab_size, options.tokens_per_shard
                )
            writers[split].add_document(ids, trained)
            tally.add(split, document.group, len(ids), document.utf8_bytes)
        for split, writer in writers.items():
            tally.splits[split]["shards"] = [path.name for path in writer.close()]
    except BaseException:
        remove_shards_of(options.output, key)  # an input is prepared whole or not at all
        raise
    tally.send_report()
    record = {
        "name": item.name,
        "path": os.path.abspath(item.paths[0] if len(item.paths) == 1 else item.paths[0].parent),
        "files": len(item.paths),
        "bytes": item.size,
        "format": item.format,
        "options": options.input_options(item.format),
        "settings": run_settings(options, tokenizer),
        "tokens_per_shard": options.tokens_per_shard,
        "splits": tally.splits,
        "groups": tally.groups,
        "filtered": tally.filtered,
        "skipped": tally.skipped,
        "first_skipped": tally.first_skipped,
    }
    record_path = options.output / DONE_FOLDER / f"{key}.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record_path, record, indent=1)
    return record


def _documents(item: Input, options: Options, tokenizer: Tokenizer) -> Iterator[Document | Conversation | Skip]:
    if item.format == "chat":
        return read_conversations(item, tuple(tokenizer.special_pieces))
    return read_documents(item, options.sets)


def _encode(document, item: Input, options: Options, tokenizer: Tokenizer):
    """(ids, trained-token mask or None) of a document or conversation, or the Skip saying why not."""
    if isinstance(document, Skip):
        return document
    if isinstance(document, Document):
        return tokenizer.encode(document.text, bos=options.bos, eos=options.eos), None
    try:
        return encode_chat(tokenizer, list(document.messages), options.chat_template)
    except ValueError as error:  # this template and tokenizer cannot tell an answer's ids apart
        return Skip("answer not separable", item.paths[0], document.where, str(error))


class Tally:
    """The counts of one input: documents and tokens per split and per group (set or language),
    documents left out by reason, and what the progress line has not been told yet."""

    def __init__(self, report):
        self.splits: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.filtered: dict[str, int] = {}  # left out by choice (a set filter, an empty text)
        self.skipped: dict[str, int] = {}  # bad input
        self.first_skipped: dict[str, str] = {}  # where each kind of bad input was met first
        self._report, self._unreported, self._last_report = report, Counter(), time.monotonic()

    def add(self, split: str, group: str, tokens: int, utf8_bytes: int) -> None:
        for counts in (
            self.splits.setdefault(split, {"documents": 0, "tokens": 0}),
            self.groups.setdefault(group, {"documents": 0, "tokens": 0}),
        ):
            counts["documents"] += 1
            counts["tokens"] += tokens
        self._unreported.update(documents=1, tokens=tokens, MB=utf8_bytes / 1e6)
        if time.monotonic() - self._last_report >= REPORT_EVERY_S:
            self.send_report()

    def leave_out(self, skip: Skip, strict: bool) -> None:
        if skip.problem and strict:
            raise UserError(f"{skip.location()}: {skip.message} (--strict)")
        counts = self.skipped if skip.problem else self.filtered
        counts[skip.reason] = counts.get(skip.reason, 0) + 1
        if skip.problem:
            self.first_skipped.setdefault(skip.reason, f"{skip.location()}: {skip.message}")

    def send_report(self) -> None:
        self._report(
            documents=self._unreported["documents"], tokens=self._unreported["tokens"], MB=self._unreported["MB"]
        )
        self._unreported, self._last_report = Counter(), time.monotonic()


def remove_shards_of(output: Path, key: str) -> None:
    """Remove the shards of one input, whole or half-written: a killed run may leave a shard under
    the temporary name files.atomic_write_bytes gives it (.<name>.tmp-<pid>), or under <name>.tmp
    from earlier versions."""
    pattern = re.compile(rf"\.?[a-z0-9_]+-{re.escape(key)}-\d+\.bin(\.tmp(-\d+)?)?")
    if output.is_dir():
        for path in output.iterdir():
            if pattern.fullmatch(path.name):
                path.unlink()


def run_settings(options: Options, tokenizer: Tokenizer) -> dict:
    """How documents became tokens: one value for a whole prepared folder."""
    settings = {"bos": options.bos, "eos": options.eos, "tokenizer_sha256": tokenizer.checksum()}
    return settings | ({"chat_template": options.chat_template} if options.chat_template else {})
