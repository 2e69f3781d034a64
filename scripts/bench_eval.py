#!/usr/bin/env python3
"""Downstream evaluation throughput: items per second of scripts/evaluate.py's path (read the rows,
encode, score, reduce) on synthetic HellaSwag-format items, with a randomly initialised model of a
flavor (the weights do not change the work). The rows are written as Rowan/hellaswag publishes them
(four endings, a string label), with words drawn from Python's documentation, about as long as
HellaSwag's (a 35-word context, 4 endings of about 20 words).

    python scripts/bench_eval.py --flavor tinyllama_1b --items 1000 --json eval.json   # on a GPU: bf16
    python scripts/bench_eval.py --flavor debug --items 100                            # seconds on a CPU

The tokenizer is --tokenizer (the Llama 2 tokenizer.model for a TinyLlama-shaped model), else a
4096-piece BPE trained here on the same documents in a few seconds.
"""

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinytitan.data.builtin_corpus import prose_documents, train_tokenizer
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.evaluation.results import table
from tinytitan.evaluation.suite import evaluate_tasks, load_task
from tinytitan.models.args import FLAVORS
from tinytitan.models.llama import build_model, select_kernels
from tinytitan.parallel import Precision


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="debug", choices=sorted(FLAVORS), help="model flavor (default: debug)")
    parser.add_argument("--items", type=int, default=100, help="HellaSwag-format items (default: 100)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward (default: 16384)")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece tokenizer.model (default: one trained here)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when there")
    parser.add_argument("--json", type=Path, help="write the measurement here")
    options = parser.parse_args(argv)
    for name in ("items", "batch_tokens"):
        if getattr(options, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(options, name)}: expected 1 or more")
    return options


def hellaswag_rows(count: int, seed: int = 0) -> list[dict]:
    words = " ".join(prose_documents()).split()
    rng = random.Random(seed)

    def text(length: int) -> str:
        start = rng.randrange(len(words) - length)
        return " ".join(words[start : start + length])

    return [
        {
            "ind": index,
            "activity_label": text(2),
            "ctx_a": text(30),
            "ctx_b": text(5),
            "ctx": "",
            "endings": [text(rng.randint(12, 28)) for _ in range(4)],
            "source_id": f"synthetic~{index}",
            "split": "val",
            "split_type": "indomain",
            "label": str(rng.randrange(4)),
        }
        for index in range(count)
    ]


def main(argv) -> int:
    options = parse_args(argv)
    cuda = options.device == "cuda" or (options.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    with tempfile.TemporaryDirectory() as folder:
        rows = Path(folder) / "hellaswag.jsonl"
        rows.write_text("".join(json.dumps(row) + "\n" for row in hellaswag_rows(options.items)))
        tokenizer_path = options.tokenizer
        if tokenizer_path is None:
            tokenizer_path = Path(folder) / "tokenizer.model"
            train_tokenizer(prose_documents(), tokenizer_path)
        tokenizer = Tokenizer(tokenizer_path)
        args = FLAVORS[options.flavor]
        torch.manual_seed(0)
        model = build_model(args, device, select_kernels("auto", device)).eval()
        precision = Precision.of("auto", device)
        start = time.perf_counter()
        task = load_task("hellaswag", str(rows), 0, tokenizer, args.max_seq_len)
        encoded = time.perf_counter()
        env = argparse.Namespace(rank=0, world_size=1, device=device)
        results = evaluate_tasks(model, [task], env, precision, options.batch_tokens)
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
    tokens = sum(len(request.tokens) for request in task.requests)
    record = {
        "flavor": options.flavor,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "precision": "bf16 autocast" if precision.bfloat16 else "float32",
        "torch": torch.__version__,
        "items": options.items,
        "requests": len(task.requests),
        "tokens": tokens,
        "batch_tokens": options.batch_tokens,
        "read_and_encode_s": round(encoded - start, 3),
        "score_s": round(end - encoded, 3),
        "items_per_s": round(options.items / (end - start), 2),
        "scored_tokens_per_s": round(tokens / (end - encoded)),
    }
    print(table(results), file=sys.stderr)
    print(
        f"| flavor | device | precision | items | requests | tokens | encode s | score s | items/s |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {options.flavor} | {record['device']} | {record['precision']} | {options.items} | {len(task.requests)} | "
        f"{tokens:,} | {record['read_and_encode_s']} | {record['score_s']} | {record['items_per_s']} |"
    )
    if options.json:
        options.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_entry_point(main)
