#!/usr/bin/env python3
"""Zero-shot downstream evaluation of a DCP checkpoint or a Hugging Face Llama folder, with the
numbers lm-evaluation-harness gives (docs/evaluation.md), from local task files; and perplexity on
a prepared source's validation split.

    python scripts/evaluate.py outputs/debug/checkpoints/step-200 --tasks builtin
    python scripts/evaluate.py hf/tinyllama --tasks hellaswag=hellaswag/validation.jsonl,piqa=piqa/valid.parquet \\
        --json results.json
    torchrun --nproc-per-node 8 scripts/evaluate.py CKPT --tasks arc_easy=arc_easy/test.jsonl

Tasks: hellaswag, piqa, arc_easy, arc_challenge, winogrande, boolq, openbookqa, lambada_openai (each
NAME=FILE, the Hugging Face dataset's JSON Lines or parquet rows), and builtin (made from the
built-in corpus, no file). Under torchrun each rank scores a shard of the items. bf16 autocast on
CUDA by default. Prints a table on stdout; --json writes {"<task>": {"acc": ..., "items": N, ...}}.
"""

import argparse
import time
from pathlib import Path

import torch

from tinytitan.config.schema import Data, DataSource, Parallelism
from tinytitan.data.sources import build_streams
from tinytitan.errors import UserError, run_entry_point
from tinytitan.evaluation.results import table, write_items, write_json
from tinytitan.evaluation.suite import encode_task, evaluate_tasks, parse_task_list, read_task
from tinytitan.model_files import load_model, require_tokenizer
from tinytitan.parallel import Precision, is_main_process, parallel_env
from tinytitan.validation import evaluate as validation_loss


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, metavar="CKPT_OR_HF_DIR", help="DCP checkpoint or Hugging Face folder")
    parser.add_argument("--tasks", default="", help="NAME=FILE,... and/or builtin (see above)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first this many items of each task (0: all)")
    parser.add_argument(
        "--perplexity",
        type=Path,
        action="append",
        default=[],
        metavar="SOURCE_DIR",
        help="a folder prepared by scripts/prepare_data.py: the loss and perplexity of its validation split "
        "(repeatable)",
    )
    parser.add_argument(
        "--perplexity-samples", type=int, default=64, help="validation samples for --perplexity (default: 64)"
    )
    parser.add_argument("--seq-len", type=int, default=0, help="sequence length for --perplexity (0: max_seq_len)")
    parser.add_argument(
        "--batch-tokens", type=int, default=16384, help="padded tokens per forward, at most (default: 16384)"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this file")
    parser.add_argument(
        "--log-items", type=Path, metavar="FILE", help="write each item's log-likelihoods and choices as JSON Lines"
    )
    parser.add_argument("--flavor", help="model flavor, for a checkpoint outside a run folder")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece tokenizer.model (default: the model's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when there")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "float32", "bfloat16"),
        help="auto: bf16 autocast on CUDA, float32 on CPU (weights stay float32)",
    )
    options = parser.parse_args(argv)
    for name in ("limit", "perplexity_samples", "seq_len"):
        if getattr(options, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} {getattr(options, name)}: expected 0 or more")
    if options.batch_tokens < 1:
        raise UserError(f"--batch-tokens {options.batch_tokens}: expected 1 or more")
    return options


def perplexities(model, sources: list[Path], options, tokenizer, env, precision: Precision) -> dict[str, float]:
    """val/<folder name>/loss and perplexity, as training's validation computes them."""
    seq_len = options.seq_len or model.args.max_seq_len
    data = Data(
        dataset="sources",
        sources=[DataSource(name=path.name, path=str(path)) for path in sources],
        tokenizer_path=str(tokenizer.path),
    )
    _, streams, _ = build_streams(data, model.args.vocab_size, seq_len, seed=0)
    micro_batch = max(1, options.batch_tokens // seq_len)
    validation = argparse.Namespace(eval_samples=options.perplexity_samples, eval_steps=1)
    return validation_loss(model, streams, validation, micro_batch, env, precision)


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    pairs = parse_task_list(options.tasks)
    if not pairs and not options.perplexity:
        raise UserError("nothing to evaluate: give --tasks NAME=FILE,... and/or --perplexity SOURCE_DIR")
    read = [read_task(name, path, options.limit) for name, path in pairs]  # a bad file fails before the model loads
    with parallel_env(options.device, Parallelism()) as env:
        model, spec = load_model(options.model, env.device, torch.float32, options.flavor, options.tokenizer)
        tokenizer = require_tokenizer(spec, options.model)
        precision = Precision.of(options.precision, env.device)
        tasks = [encode_task(task, items, tokenizer, model.args.max_seq_len) for task, items in read]
        start = time.perf_counter()
        results = evaluate_tasks(model, tasks, env, precision, options.batch_tokens, show_progress=is_main_process())
        seconds = time.perf_counter() - start
        losses = (
            perplexities(model, options.perplexity, options, tokenizer, env, precision) if options.perplexity else {}
        )
        if is_main_process():  # inside the block: once the process group is gone, every process is "main"
            report(results, losses, seconds, env, precision, tasks, options)


def report(results, losses, seconds: float, env, precision: Precision, tasks, options) -> None:
    """The table on stdout, and the files asked for."""
    if results:
        items = sum(result.items for result in results.values())
        print(table(results), flush=True)
        print(
            f"{items} items in {seconds:.1f}s ({items / seconds:.1f} items/s) on {env.world_size} rank(s), "
            f"{env.device.type}, {'bf16' if precision.bfloat16 else 'float32'}",
            flush=True,
        )
    for name, value in losses.items():
        print(f"{name} {value:.4f}", flush=True)
    if options.log_items:
        write_items(options.log_items, results, {task.task.name: [item.gold for item in task.items] for task in tasks})
        print(f"items written to {options.log_items}", flush=True)
    if options.json:
        write_json(options.json, results, losses)
        print(f"results written to {options.json}", flush=True)


if __name__ == "__main__":
    run_entry_point(main)
