#!/usr/bin/env python3
"""Data pipeline throughput. Tokenization: the tokenizer alone in this process (what one worker
can do at best), then scripts/prepare_data.py with its worker processes on the same corpus
(reading, decompressing, tokenizing and writing shards), as tokens/s in all and per worker.

The corpus is generated from real text that ships with Python (its documentation and standard
library sources, as in the built-in corpus) and written as SlimPajama-style .jsonl.zst files, or
given with --inputs.

    python scripts/bench_data.py                   # a 64 MB corpus, all CPUs, the Llama 2 tokenizer
    python scripts/bench_data.py --smoke           # seconds on a CPU: a 2 MB corpus, 2 workers
    python scripts/bench_data.py --inputs 'SlimPajama-627B/train/chunk1/*.jsonl.zst' --workers 16 --json out.json
"""

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from tinytitan.data.builtin_corpus import code_documents, prose_documents
from tinytitan.data.loader import DataLoader
from tinytitan.data.manifest import read_manifest
from tinytitan.data.sources import Source, training_stream
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.prepare import run as prepare_data
from tinytitan.prepare.options import find_tokenizer

SETS = ("RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaBook", "RedPajamaArXiv", "RedPajamaWikipedia")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--inputs", nargs="+", help="files, folders or patterns to prepare instead of a generated corpus"
    )
    parser.add_argument("--format", default="auto", help="--format for prepare_data.py with --inputs")
    parser.add_argument("--megabytes", type=float, default=64.0, help="size of the generated corpus's text")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokenizer", type=Path, help="as prepare_data.py's --tokenizer (default: the Llama 2 one)")
    parser.add_argument("--sample-megabytes", type=float, default=8.0, help="text tokenized in this process alone")
    parser.add_argument("--smoke", action="store_true", help="a quick run: 2 MB, at most 2 workers")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.megabytes, args.sample_megabytes, args.workers = 2.0, 1.0, min(args.workers, 2)
    return args


def generated_documents(megabytes: float) -> list[str]:
    """Real prose and code, about 7:3 by size as in TinyLlama's mix, repeated up to `megabytes`."""
    prose, code = prose_documents(), code_documents()
    documents, size, index = [], 0, 0
    while size < megabytes * 1e6:
        document = code[index % len(code)] if index % 10 >= 7 else prose[index % len(prose)]
        documents.append(document)
        size += len(document.encode("utf-8"))
        index += 1
    return documents


def write_corpus(documents: list[str], folder: Path, files: int) -> list[Path]:
    """SlimPajama-style chunk files, documents dealt round-robin so each file has the same mix."""
    import zstandard

    paths = []
    for number in range(files):
        lines = [
            json.dumps({"text": text, "meta": {"redpajama_set_name": SETS[i % len(SETS)]}})
            for i, text in enumerate(documents[number::files])
        ]
        path = folder / "train" / "chunk1" / f"example_train_{number}.jsonl.zst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor(level=3).compress(("\n".join(lines) + "\n").encode()))
        paths.append(path)
    return paths


def bench_tokenizer(tokenizer: Tokenizer, documents: list[str], megabytes: float) -> dict:
    """The tokenizer alone, one process: the ceiling of one worker."""
    sample, size = [], 0
    for document in documents:
        if size >= megabytes * 1e6:
            break
        sample.append(document)
        size += len(document.encode("utf-8"))
    start = time.perf_counter()
    tokens = sum(len(tokenizer.encode(document, bos=True, eos=True)) for document in sample)
    seconds = time.perf_counter() - start
    return {
        "documents": len(sample),
        "megabytes": size / 1e6,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "megabytes_per_second": size / 1e6 / seconds,
    }


def bench_prepare(inputs: list[str], format: str, tokenizer_path: Path, workers: int, output: Path) -> dict:
    """scripts/prepare_data.py end to end, its summary kept out of the report."""
    argv = [
        *inputs,
        "--output",
        str(output),
        "--format",
        format,
        "--tokenizer",
        str(tokenizer_path),
        "--workers",
        str(workers),
        "--exclude-sets",
        "",
    ]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        prepare_data.main(argv)
    seconds = time.perf_counter() - start
    manifest = read_manifest(output)
    tokens = sum(split["tokens"] for split in manifest["splits"].values())
    documents = sum(split["documents"] for split in manifest["splits"].values())
    megabytes = sum(record["bytes"] for record in manifest["inputs"]) / 1e6
    left_out = sum(manifest["documents_filtered"].values()) + sum(manifest["documents_skipped"].values())
    return {
        "inputs": len(manifest["inputs"]),
        "workers": workers,
        "documents": documents,
        "left_out": left_out,
        "tokens": tokens,
        "input_megabytes": megabytes,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "tokens_per_second_per_worker": tokens / seconds / workers,
    }


GOAL_TOKENS_PER_SECOND = 75_000  # one H100 at the throughput goal of the TinyLlama recipe


def bench_loader(prepared: Path, seq_len: int, micro_batch_size: int, batches: int) -> dict:
    """Tokens/s one rank's loader delivers from the prepared folder, mixed 7:3 with itself as two
    sources (so the mixing is paid for), for 0 and 2 worker processes."""
    sources = [Source("a", prepared, 0.7), Source("b", prepared, 0.3)]
    stream = training_stream(sources, seq_len, seed=0)
    results = {
        "seq_len": seq_len,
        "micro_batch_size": micro_batch_size,
        "batches": batches,
        "goal_tokens_per_second": GOAL_TOKENS_PER_SECOND,
    }
    for workers in (0, 2):
        loader = DataLoader(stream, micro_batch_size, num_workers=workers)
        next(loader)  # start-up (worker processes) is not throughput
        start = time.perf_counter()
        for _ in range(batches):
            next(loader)
        seconds = time.perf_counter() - start
        loader.close()
        results[f"workers_{workers}_tokens_per_second"] = batches * micro_batch_size * seq_len / seconds
    return results


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected an integer >= 1")
    for flag, megabytes in (("--megabytes", args.megabytes), ("--sample-megabytes", args.sample_megabytes)):
        if not 0 < megabytes < math.inf:  # NaN fails too; an infinite corpus would never finish generating
            raise UserError(f"{flag} {megabytes}: expected a finite number > 0")
    tokenizer_path = find_tokenizer(args.tokenizer)
    tokenizer = Tokenizer(tokenizer_path)
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "tokenizer": {"path": str(tokenizer_path), "vocab_size": tokenizer.vocab_size},
    }
    with tempfile.TemporaryDirectory(prefix="bench_data-") as folder:
        folder = Path(folder)
        if args.inputs:
            inputs, documents = args.inputs, None
        else:
            print(f"bench_data: generating a {args.megabytes:g} MB corpus", file=sys.stderr, flush=True)
            documents = generated_documents(args.megabytes)
            inputs = [str(p) for p in write_corpus(documents, folder / "corpus", files=max(2 * args.workers, 4))]
        if documents is not None:
            results["tokenizer_alone"] = bench_tokenizer(tokenizer, documents, args.sample_megabytes)
        results["prepare_data"] = bench_prepare(
            inputs, args.format if args.inputs else "slimpajama", tokenizer_path, args.workers, folder / "prepared"
        )
        results["loader"] = bench_loader(
            folder / "prepared",
            seq_len=2048 if not args.smoke else 256,
            micro_batch_size=8,
            batches=200 if not args.smoke else 20,
        )
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_report(results: dict) -> None:
    machine = results["machine"]
    print(f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}")
    print(f"tokenizer: {results['tokenizer']['path']} ({results['tokenizer']['vocab_size']:,} pieces)")
    if alone := results.get("tokenizer_alone"):
        print(
            f"tokenizer alone, 1 process: {alone['tokens_per_second']:,.0f} tokens/s, "
            f"{alone['megabytes_per_second']:.2f} MB/s of text ({alone['tokens']:,} tokens in {alone['seconds']:.1f}s)"
        )
    prepared = results["prepare_data"]
    print(
        f"prepare_data.py, {prepared['workers']} worker(s): {prepared['tokens_per_second']:,.0f} tokens/s, "
        f"{prepared['tokens_per_second_per_worker']:,.0f} tokens/s per worker ({prepared['tokens']:,} tokens, "
        f"{prepared['documents']:,} documents from {prepared['inputs']} input(s) of "
        f"{prepared['input_megabytes']:.1f} MB "
        f"in {prepared['seconds']:.1f}s)"
    )
    loader = results["loader"]
    for workers in (0, 2):
        rate = loader[f"workers_{workers}_tokens_per_second"]
        print(
            f"loader, 1 rank, {workers} worker(s): {rate:,.0f} tokens/s "
            f"({rate / loader['goal_tokens_per_second']:.0f}x "
            f"the {loader['goal_tokens_per_second']:,} tokens/s goal of one H100; micro-batches of "
            f"{loader['micro_batch_size']} x {loader['seq_len']})"
        )


if __name__ == "__main__":
    run_entry_point(main)
