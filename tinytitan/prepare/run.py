"""A data preparation run: the inputs not done before, prepared in worker processes with a
progress line, and the manifest refreshed now and then and at the end, also when a run stops
early (an error, or Ctrl-C), so that what was finished is kept and a rerun resumes after it.
"""

import multiprocessing
import queue
import sys
import time

from tinytitan.data.shards import MAX_VOCAB
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.prepare.inputs import Input, find_inputs, only_languages
from tinytitan.prepare.one_input import prepare_input, run_settings
from tinytitan.prepare.options import Options, options_from, parse_args
from tinytitan.prepare.output_folder import (
    check_done,
    check_settings,
    copy_tokenizer,
    load_records,
    print_summary,
    write_prepared_manifest,
)
from tinytitan.progress import Progress

MANIFEST_EVERY_S = 60.0  # how often a long run refreshes the manifest with the inputs done so far


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


def _chosen_inputs(arguments: list[str], format: str, languages: str | None) -> list[Input]:
    inputs = find_inputs(arguments, format)
    if not languages:
        return inputs
    chosen = only_languages(inputs, {name.strip() for name in languages.split(",") if name.strip()})
    print(
        f"prepare_data: --languages leaves out {len(inputs) - len(chosen)} of {len(inputs)} input(s)",
        file=sys.stderr,
        flush=True,
    )
    return chosen


def _not_done(inputs: list[Input], records: dict[str, dict], options: Options) -> list[Input]:
    """The inputs without a completion record; those with one must match it to be skipped."""
    todo = []
    for item in inputs:
        if item.name in records:
            check_done(records[item.name], item, options)
        else:
            todo.append(item)
    return todo


def main(argv: list[str], description: str | None = None) -> int:
    """The command line (`description` heads its --help): 0 when done, 130 when interrupted."""
    args = parse_args(argv, description)
    options = options_from(args)
    tokenizer = Tokenizer(options.tokenizer_path).check_fits(MAX_VOCAB, "the shards, which store ids as uint16")
    inputs = _chosen_inputs(args.inputs, args.format, args.languages)
    records = load_records(options.output)
    check_settings(records, run_settings(options, tokenizer), options.output)
    todo = _not_done(inputs, records, options)
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
