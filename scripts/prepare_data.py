#!/usr/bin/env python3
"""Prepare raw corpora as a folder of token shards for training (one folder per data source).

Each document becomes <s> tokens </s> (see --no-bos, --no-eos), packed into uint16 shards named
<split>-<input>-NNNNN.bin, and manifest.json lists the shards of each split with their counts.
Every token is kept: there is no padding and no dropped tail, and each document left out (by a set
filter, or for bad input) is counted in the manifest and the summary.

    # SlimPajama: its own validation split, then the train split, into one folder
    python scripts/prepare_data.py SlimPajama-627B/validation --split validation --output data/slimpajama
    python scripts/prepare_data.py SlimPajama-627B/train --output data/slimpajama

    # StarCoderData (no validation split of its own): hold out 0.1% of the documents
    python scripts/prepare_data.py starcoderdata --languages python,java --holdout-fraction 0.001 \\
        --output data/starcoder

    # your own files: .jsonl, .jsonl.zst (a "text" field per line) or .txt (one document per file)
    python scripts/prepare_data.py 'my_corpus/**/*.jsonl.zst' notes/ --output data/mine

Resuming: each input (a file; for .txt, a folder's files) is prepared whole by one worker, which
writes its shards and then a completion record done/<input>.json. A later run into the same folder
skips inputs with a record and redoes any other, so an interrupted preparation is resumed by running
the same command again; runs with other inputs or splits add to the same manifest. Whole-file
problems (a truncated .zst, an unreadable parquet, an empty pattern) stop the run with one line;
bad lines and rows are skipped and counted, or stop the run with --strict.
"""

import argparse
import hashlib
import json
import multiprocessing
import os
import queue
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from corpus_readers import (
    FORMATS,
    REDPAJAMA_SETS,
    Document,
    Input,
    SetFilter,
    Skip,
    find_inputs,
    only_languages,
    read_documents,
)

from tinytitan.data.manifest import MANIFEST_NAME, write_manifest
from tinytitan.data.shards import MAX_VOCAB, ShardWriter, read_header
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.progress import Progress

REPO_ROOT = Path(__file__).resolve().parent.parent
DONE_FOLDER = "done"  # per-input completion records
TOKENIZER_COPY = "tokenizer.model"
VALIDATION = "validation"
MANIFEST_EVERY_S = 60.0  # how often a long run refreshes the manifest with the inputs done so far
REPORT_EVERY_S = 0.5  # how often a worker reports its counts


@dataclass(frozen=True)
class Options:
    """Everything a worker needs to prepare an input."""

    output: Path
    tokenizer_path: Path
    bos: bool
    eos: bool
    split: str
    holdout_fraction: float
    sets: SetFilter
    strict: bool
    tokens_per_shard: int

    def input_options(self, format: str) -> dict:
        """What decides an input's tokens besides the run's settings: a resume must match it."""
        chosen = {"split": self.split, "holdout_fraction": self.holdout_fraction}
        if format in ("jsonl", "slimpajama"):  # the set filter applies to JSON lines only
            chosen["include_sets"] = sorted(self.sets.include) if self.sets.include is not None else None
            chosen["exclude_sets"] = sorted(self.sets.exclude)
        return chosen


# ---- command line ----


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="files, folders or glob patterns (quoted, ** for any depth)")
    parser.add_argument(
        "--output", "-o", required=True, type=Path, help="the prepared folder (created; added to if it exists)"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="auto", help="layout of the inputs (default: by file name)"
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="sentencepiece tokenizer.model (default: $TINYTITAN_TOKENIZER, "
        "else ../shared/assets/llama2-tokenizer.model beside the repository)",
    )
    parser.add_argument("--split", default="train", help="the split these inputs make (default: train)")
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="put this fraction of documents, chosen by a hash of input name and position, in 'validation'",
    )
    parser.add_argument(
        "--include-sets", metavar="NAMES", help="SlimPajama: keep only these RedPajama sets (comma-separated)"
    )
    parser.add_argument(
        "--exclude-sets",
        metavar="NAMES",
        default="RedPajamaGithub",
        help="SlimPajama: leave out these sets (default: RedPajamaGithub, as code comes from "
        "StarCoderData; '' keeps all)",
    )
    parser.add_argument(
        "--languages", metavar="NAMES", help="StarCoderData: only these language folders (comma-separated)"
    )
    parser.add_argument("--no-bos", dest="bos", action="store_false", help="do not start each document with <s>")
    parser.add_argument("--no-eos", dest="eos", action="store_false", help="do not end each document with </s>")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad line or row instead of skipping it"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: all CPUs)")
    parser.add_argument(
        "--tokens-per-shard",
        type=int,
        default=1 << 25,
        help="tokens per shard at most, whole documents "
        "aside (default: 2^25, 64 MiB; a worker holds up to ~16 bytes per token of it in memory)",
    )
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    if not re.fullmatch(r"[a-z0-9_]+", args.split):
        raise UserError(f"--split {args.split!r}: expected lowercase letters, digits and _ (it starts shard names)")
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise UserError(f"--holdout-fraction {args.holdout_fraction}: expected a fraction in [0, 1)")
    if args.holdout_fraction and args.split == VALIDATION:
        raise UserError(
            f"--holdout-fraction {args.holdout_fraction} with --split {VALIDATION}: expected one or the other"
        )
    if args.workers < 1 or args.tokens_per_shard < 1:
        raise UserError("--workers and --tokens-per-shard: expected integers >= 1")
    include = _set_names("--include-sets", args.include_sets) if args.include_sets is not None else None
    return Options(
        output=args.output.expanduser(),
        tokenizer_path=find_tokenizer(args.tokenizer),
        bos=args.bos,
        eos=args.eos,
        split=args.split,
        holdout_fraction=args.holdout_fraction,
        sets=SetFilter(include, _set_names("--exclude-sets", args.exclude_sets)),
        strict=args.strict,
        tokens_per_shard=args.tokens_per_shard,
    )


def _set_names(flag: str, value: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in value.split(",") if name.strip())
    if unknown := sorted(names - set(REDPAJAMA_SETS)):
        raise UserError(f"{flag} {','.join(unknown)}: expected RedPajama set names: {', '.join(REDPAJAMA_SETS)}")
    return names


def find_tokenizer(given: Path | None, environ=os.environ, repo_root: Path = REPO_ROOT) -> Path:
    """--tokenizer, else $TINYTITAN_TOKENIZER, else the Llama 2 tokenizer kept beside the checkout."""
    if given is not None:
        return given.expanduser()
    if environ.get("TINYTITAN_TOKENIZER"):
        return Path(environ["TINYTITAN_TOKENIZER"]).expanduser()
    shared = repo_root.parent / "shared/assets/llama2-tokenizer.model"
    if shared.is_file():
        return shared
    raise UserError(f"no tokenizer: expected --tokenizer PATH/tokenizer.model (or $TINYTITAN_TOKENIZER, or {shared})")


# ---- one input ----


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
        for document in read_documents(item, options.sets):
            if not isinstance(document, Document):
                tally.leave_out(document, options.strict)
                continue
            split = VALIDATION if held_out(item.name, document.where, options.holdout_fraction) else options.split
            if split not in writers:
                writers[split] = ShardWriter(
                    options.output, f"{split}-{key}", tokenizer.vocab_size, options.tokens_per_shard
                )
            ids = tokenizer.encode(document.text, bos=options.bos, eos=options.eos)
            writers[split].add_document(ids)
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
    _write_json_atomically(options.output / DONE_FOLDER / f"{key}.json", record)
    return record


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
    pattern = re.compile(rf"[a-z0-9_]+-{re.escape(key)}-\d+\.bin(\.tmp)?")
    if output.is_dir():
        for path in output.iterdir():
            if pattern.fullmatch(path.name):
                path.unlink()


def _write_json_atomically(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


# ---- the run ----


def run_settings(options: Options, tokenizer: Tokenizer) -> dict:
    """How documents became tokens: one value for a whole prepared folder."""
    return {"bos": options.bos, "eos": options.eos, "tokenizer_sha256": tokenizer.checksum()}


def load_records(output: Path) -> dict[str, dict]:
    """The completion records of inputs prepared before, by input name."""
    records = {}
    for path in sorted((output / DONE_FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            records[record["name"]] = record
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{path}: cannot read it ({error!r}): expected a completion record "
                "(delete it to prepare that input again)"
            ) from None
    if not records and (output / MANIFEST_NAME).exists():
        raise UserError(
            f"{output}: holds a {MANIFEST_NAME} without {DONE_FOLDER}/ records: expected a new folder or "
            "one prepared by scripts/prepare_data.py"
        )
    return records


def check_settings(records: dict[str, dict], settings: dict, output: Path) -> None:
    for record in records.values():
        if record["settings"] != settings:
            raise UserError(
                f"{output}: prepared with {_describe(record['settings'])}: expected the same settings to add "
                f"to it (this run: {_describe(settings)}); use a new --output folder"
            )


def _describe(settings: dict) -> str:
    return f"bos={settings['bos']} eos={settings['eos']} tokenizer sha256 {settings['tokenizer_sha256'][:12]}…"


def check_done(record: dict, item: Input, options: Options) -> None:
    """An input with a record is skipped only when it is the same file prepared the same way and
    its shards are whole."""
    differences = []
    if (record["bytes"], record["files"]) != (item.size, len(item.paths)):
        differences.append(
            f"then {record['files']} file(s) of {record['bytes']:,} bytes, now {len(item.paths)} of {item.size:,}"
        )
    if record["options"] != options.input_options(item.format):
        differences.append(f"then {record['options']}, now {options.input_options(item.format)}")
    record_path = options.output / DONE_FOLDER / f"{input_key(item.name)}.json"
    if differences:
        raise UserError(
            f"input {item.name}: already prepared in {options.output} differently ({'; '.join(differences)}): "
            f"expected the same file and options to resume; use a new --output, or delete {record_path} to redo it"
        )
    for split, entry in record["splits"].items():
        tokens = sum(read_header(options.output / shard).num_tokens for shard in entry["shards"])
        if tokens != entry["tokens"]:
            raise UserError(
                f"input {item.name}: its {split} shards hold {tokens:,} tokens: expected {entry['tokens']:,} "
                f"as recorded; delete {record_path} to redo it"
            )


def write_prepared_manifest(output: Path, tokenizer: Tokenizer, records: dict[str, dict], options: Options) -> Path:
    """The manifest of every input prepared into `output`, by this run or earlier ones."""
    splits, groups, filtered, skipped = {}, {}, {}, {}
    ordered = [records[name] for name in sorted(records)]
    for record in ordered:
        for split, entry in record["splits"].items():
            total = splits.setdefault(split, {"shards": [], "documents": 0, "tokens": 0})
            total["shards"] += entry["shards"]
            total["documents"] += entry["documents"]
            total["tokens"] += entry["tokens"]
        for group, counts in record["groups"].items():
            _add(groups.setdefault(group, {}), counts)
        _add(filtered, record["filtered"])
        _add(skipped, record["skipped"])
    settings = {"bos": options.bos, "eos": options.eos, "document": _document_shape(options)}
    inputs = [{k: v for k, v in record.items() if k != "settings"} for record in ordered]
    return write_manifest(
        output,
        tokenizer,
        dict(sorted(splits.items())),
        settings,
        tokenizer_file=TOKENIZER_COPY,
        prepared_by="scripts/prepare_data.py",
        groups=dict(sorted(groups.items())),
        documents_filtered=filtered,
        documents_skipped=skipped,
        inputs=inputs,
    )


def _add(total: dict, counts: dict) -> None:
    for name, value in counts.items():
        total[name] = total.get(name, 0) + value


def _document_shape(options: Options) -> str:
    return " ".join(["<s>"] * options.bos + ["tokens"] + ["</s>"] * options.eos)


def prepare_all(todo: list[Input], options: Options, workers: int, on_done) -> None:
    """Prepare the inputs in `workers` processes (here when one), calling on_done(record) for each."""
    if not todo:
        return
    progress = Progress("prepare_data", total=len(todo), unit="inputs", rates=("documents", "tokens", "MB"))
    report = lambda **counts: progress.update(0, **counts)  # noqa: E731
    try:
        if workers == 1 or len(todo) <= 1:
            tokenizer = Tokenizer(options.tokenizer_path)
            for item in todo:
                on_done(prepare_input(item, options, tokenizer, report))
                progress.update(1)
            return
        context = multiprocessing.get_context("spawn")  # the same on every platform; workers load their own tokenizer
        reports = context.Queue()
        with context.Pool(min(workers, len(todo)), _start_worker, (options, reports)) as pool:
            results, remaining = pool.imap_unordered(_prepare_in_worker, todo), len(todo)
            while remaining:
                try:
                    record = results.next(timeout=0.2)  # a worker's error is raised here
                except multiprocessing.TimeoutError:
                    record = None
                _drain(reports, report)
                if record is not None:
                    on_done(record)
                    progress.update(1)
                    remaining -= 1
    finally:
        progress.close()


_worker: dict = {}  # a worker process's tokenizer, options and report queue


def _start_worker(options: Options, reports) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _worker.update(options=options, tokenizer=Tokenizer(options.tokenizer_path), reports=reports)


def _prepare_in_worker(item: Input) -> dict:
    return prepare_input(
        item, _worker["options"], _worker["tokenizer"], lambda **counts: _worker["reports"].put(counts)
    )


def _drain(reports, report) -> None:
    while True:
        try:
            report(**reports.get_nowait())
        except queue.Empty:
            return


def copy_tokenizer(tokenizer: Tokenizer, output: Path) -> None:
    """A copy beside the shards, so the folder names and holds what it was made with."""
    copy = output / TOKENIZER_COPY
    if copy.is_file() and copy.read_bytes() == tokenizer.path.read_bytes():
        return
    temporary = copy.with_name(copy.name + ".tmp")
    shutil.copyfile(tokenizer.path, temporary)
    os.replace(temporary, copy)


def print_summary(output: Path, records: dict[str, dict], prepared: int, already: int) -> None:
    splits, filtered, skipped, first = {}, {}, {}, {}
    for record in records.values():
        for split, entry in record["splits"].items():
            counts = {"documents": entry["documents"], "tokens": entry["tokens"], "shards": len(entry["shards"])}
            _add(splits.setdefault(split, {}), counts)
        _add(filtered, record["filtered"])
        _add(skipped, record["skipped"])
        for reason, where in record["first_skipped"].items():
            first.setdefault(reason, where)
    print(f"prepared {prepared} input(s) into {output} ({already} done before); the folder holds {len(records)}:")
    for split, counts in sorted(splits.items()):
        print(
            f"  {split}: {counts['documents']:,} documents, {counts['tokens']:,} tokens in {counts['shards']} shard(s)"
        )
    if filtered:
        print("  left out by choice: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(filtered.items())))
    if skipped:
        print(
            "  skipped as bad input (--strict stops at them instead): "
            + "; ".join(f"{reason} {count:,} (first: {first[reason]})" for reason, count in sorted(skipped.items()))
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    options = options_from(args)
    tokenizer = Tokenizer(options.tokenizer_path)
    if tokenizer.vocab_size > MAX_VOCAB:
        raise UserError(
            f"tokenizer {options.tokenizer_path}: {tokenizer.vocab_size:,} pieces: expected at most "
            f"{MAX_VOCAB:,}, as shards store ids as uint16"
        )
    inputs = find_inputs(args.inputs, args.format)
    if args.languages:
        chosen = only_languages(inputs, {name.strip() for name in args.languages.split(",") if name.strip()})
        print(
            f"prepare_data: --languages leaves out {len(inputs) - len(chosen)} of {len(inputs)} input(s)",
            file=sys.stderr,
            flush=True,
        )
        inputs = chosen
    records = load_records(options.output)
    check_settings(records, run_settings(options, tokenizer), options.output)
    todo = []
    for item in inputs:
        if item.name in records:
            check_done(records[item.name], item, options)
        else:
            todo.append(item)
    options.output.mkdir(parents=True, exist_ok=True)
    copy_tokenizer(tokenizer, options.output)
    print(
        f"prepare_data: {len(inputs)} input(s), {len(inputs) - len(todo)} done before; tokenizing with "
        f"{options.tokenizer_path} into {options.output}",
        file=sys.stderr,
        flush=True,
    )
    last_manifest = time.monotonic()

    def on_done(record: dict) -> None:
        nonlocal last_manifest
        records[record["name"]] = record
        if time.monotonic() - last_manifest >= MANIFEST_EVERY_S:
            write_prepared_manifest(options.output, tokenizer, records, options)
            last_manifest = time.monotonic()

    try:
        prepare_all(todo, options, args.workers, on_done)
    except KeyboardInterrupt:
        print(
            f"interrupted: {len(records)} input(s) prepared are kept; run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        return 130
    finally:
        if records:  # whatever was finished stays listed, also when a later input failed
            write_prepared_manifest(options.output, tokenizer, records, options)
    print_summary(options.output, records, len(todo), len(inputs) - len(todo))
    return 0


if __name__ == "__main__":
    run_entry_point(main)
