#!/usr/bin/env python3
"""Training throughput of tinytitan against the baseline a user would otherwise pick.

Each variant of ours is a set of config overrides run through the real training loop (`train()`)
on synthetic tokens. The variant named `transformers` is Hugging Face's LlamaForCausalLM of the
same size (SDPA attention, AdamW, the same micro-batch, bf16 autocast on CUDA) on the same device,
and every row reports its ratio to it. The first --warmup steps of each run (compilation, allocator
growth) are left out of its average. So that no variant pays for the process's own warm-up, the first
variant runs once first and is discarded; then the variants run --repeats times, interleaved
(A B A B ...), and each row gives the median over the repeats with the min-max spread, and the
median (min-max) of its per-repeat ratio to the baseline run beside it. FLOPs per token =
6N + 12*L*d*T (N without the input embedding), MFU against the dense bf16 peak of
`tinytitan.metrics.PEAK_BF16_FLOPS`; no MFU on CPU or an unknown GPU.

    python scripts/bench_train.py                       # tinyllama_1b on CUDA, debug on CPU
    python scripts/bench_train.py --flavor debug --steps 5 --variant "mbs 4=--training.micro_batch_size=4"

Variants run on synthetic tokens unless their overrides name data, e.g. --data.dataset=builtin.
"""

import argparse
import contextlib
import datetime
import gc
import importlib.util
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinytitan.config import load_config, model_args
from tinytitan.errors import UserError, run_entry_point
from tinytitan.metrics import PEAK_BF16_FLOPS, flops_per_token, peak_flops_of
from tinytitan.models.llama import FLAVORS, Transformer, count_parameters
from tinytitan.train import train

BASELINE = "transformers"
# Document masking needs documents: the built-in corpus (bos-delimited, its own 4096-piece tokenizer,
# so the vocabulary is set to the flavor's 32000 to keep the model, and its FLOPs, the same).
DOCUMENTS = (
    "--data.dataset=builtin --model.vocab_size=32000 --data.document_masking=true "
    "--data.document_positions=per_document"
)
GPU_VARIANTS = [
    "triton kernels + compile=--model.kernels=triton --compile.enable --training.micro_batch_size=8",
    "torch kernels + compile=--model.kernels=torch --compile.enable --training.micro_batch_size=8",
    "triton kernels, eager=--model.kernels=triton --training.micro_batch_size=8",
    "triton + compile + full AC, mbs 16=--model.kernels=triton --compile.enable --activation_checkpoint.mode=full "
    "--training.micro_batch_size=16",
    "flex causal + triton + compile=--model.attention=flex --model.kernels=triton --compile.enable "
    "--training.micro_batch_size=8",
    f"flex documents + triton + compile=--model.attention=flex {DOCUMENTS} --model.kernels=triton --compile.enable "
    "--training.micro_batch_size=8",
    *(
        [
            "flash causal + triton + compile=--model.attention=flash --model.kernels=triton --compile.enable "
            "--training.micro_batch_size=8",
            f"flash documents + triton + compile=--model.attention=flash {DOCUMENTS} --model.kernels=triton "
            "--compile.enable --training.micro_batch_size=8",
        ]
        if importlib.util.find_spec("flash_attn")
        else []
    ),
    f"{BASELINE}=--training.micro_batch_size=8",
]
# On a CPU the loader's worker processes would compete with the model for the few cores.
CPU_VARIANTS = ["ours=--training.micro_batch_size=4 --data.num_workers=0", f"{BASELINE}=--training.micro_batch_size=4"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", choices=sorted(FLAVORS), help="default: tinyllama_1b on CUDA, debug on CPU")
    parser.add_argument("--seq-len", type=int, help="default: the flavor's max_seq_len (256 for debug)")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, interleaved (median, min-max)")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=OVERRIDES",
        help="a named set of space-separated --section.key=value overrides; repeatable",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    args.flavor = args.flavor or ("tinyllama_1b" if cuda else "debug")
    longest = FLAVORS[args.flavor].max_seq_len
    if args.seq_len is not None and not 2 <= args.seq_len <= longest:
        raise UserError(
            f"--seq-len {args.seq_len}: expected an integer from 2 to {longest}, flavor {args.flavor}'s max_seq_len"
        )
    args.seq_len = args.seq_len or (longest if args.flavor != "debug" else 256)
    args.variant = args.variant or (GPU_VARIANTS if cuda else CPU_VARIANTS)
    return args


def run_baseline(config, warmup: int, steps: int) -> list[dict]:
    """Hugging Face's LlamaForCausalLM trained like ours: per-step tokens/s and peak memory."""
    import transformers

    from tinytitan.data.loader import DataLoader
    from tinytitan.data.streams import SyntheticStream
    from tinytitan.hf.mapping import to_hf_config
    from tinytitan.metrics import memory_gib
    from tinytitan.optim import build_optimizer
    from tinytitan.parallel import select_device

    device, args = select_device(config.training.device), model_args(config.model)
    torch.manual_seed(config.training.seed)
    hf_config = transformers.LlamaConfig(**to_hf_config(args), attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf_config).to(device).train()
    optimizer = build_optimizer(model, config.optimizer, device)  # the same AdamW as ours
    loader = DataLoader(
        SyntheticStream(args.vocab_size, config.training.seq_len, (config.training.seed,)),
        config.training.micro_batch_size,
        device=device,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    records = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        inputs, _ = next(loader)
        with autocast:
            loss = model(input_ids=inputs, labels=inputs).loss  # transformers shifts the labels itself
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.max_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()  # waits for the device, as ours does on its (every-step) log lines
        elapsed = time.perf_counter() - start
        records.append(
            {"loss": loss_value, "tokens_per_second": inputs.numel() / elapsed, "memory_gib": memory_gib(device)}
        )
    return records


def run_variant(spec: str, args, log) -> dict:
    name, _, overrides = spec.partition("=")
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(
            [
                f"--model.flavor={args.flavor}",
                "--data.dataset=synthetic",
                f"--training.seq_len={args.seq_len}",
                f"--training.steps={args.warmup + args.steps}",
                "--metrics.log_freq=1",
                "--metrics.enable_tensorboard=false",
                f"--lr_scheduler.warmup_steps={min(2, args.warmup + args.steps - 1)}",  # fewer than the steps
                f"--job.dump_folder={folder}",
                "--job.name=bench",
                *overrides.split(),
            ]
        )
        micro_batch = config.training.micro_batch_size
        config.training.global_batch_tokens = micro_batch * args.seq_len  # one micro-step per step
        result = {"name": name, "overrides": overrides, "micro_batch_size": micro_batch}
        try:
            with contextlib.redirect_stdout(log):
                records = run_baseline(config, args.warmup, args.steps) if name == BASELINE else train(config)
        except torch.OutOfMemoryError:
            return {**result, "error": "out of memory"}
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    measured = records[args.warmup :]
    tokens_per_second = statistics.mean(r["tokens_per_second"] for r in measured)
    result.update(
        tokens_per_second=tokens_per_second,
        step_time_s=micro_batch * args.seq_len / tokens_per_second,
        peak_memory_gib=max(r["memory_gib"] for r in measured),
        loss_first=records[0]["loss"],
        loss_last=records[-1]["loss"],
    )
    peak = peak_flops_of(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    if peak:
        result["mfu_percent"] = 100 * tokens_per_second * args.flops_per_token / peak
    return result


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict], baseline_runs: list[dict] | None) -> dict:
    """One variant over its repeats: medians and spreads, and the ratio to the baseline run of the
    same repeat (run next to it, so under the same machine load)."""
    if any("error" in run for run in runs):
        return next(run for run in runs if "error" in run)
    speeds = [run["tokens_per_second"] for run in runs]
    median = statistics.median(speeds)
    summary = {
        **runs[0],
        "tokens_per_second": median,
        "tokens_per_second_spread": spread(speeds),
        "step_time_s": runs[0]["step_time_s"] * runs[0]["tokens_per_second"] / median,
        "peak_memory_gib": max(run["peak_memory_gib"] for run in runs),
        "runs": speeds,
    }
    if "mfu_percent" in runs[0]:
        summary["mfu_percent"] = runs[0]["mfu_percent"] * median / runs[0]["tokens_per_second"]
    if baseline_runs and not any("error" in run for run in baseline_runs):
        ratios = [run["tokens_per_second"] / base["tokens_per_second"] for run, base in zip(runs, baseline_runs)]
        summary["ratio_to_baseline"] = spread(ratios)
    return summary


def run_interleaved(args, log) -> list[dict]:
    """A discarded warm-up run of the first variant, then the variants --repeats times, interleaved."""
    print(f"bench_train: warm-up run of {args.variant[0].partition('=')[0]} (discarded) ...", file=sys.stderr)
    run_variant(args.variant[0], argparse.Namespace(**{**vars(args), "steps": 1}), log)  # its numbers are not used
    runs = {spec: [] for spec in args.variant}
    for repeat in range(args.repeats):
        for spec in args.variant:
            print(f"bench_train: {spec.partition('=')[0]}, run {repeat + 1}/{args.repeats} ...", file=sys.stderr)
            runs[spec].append(run_variant(spec, args, log))
    baseline = next((r for spec, r in runs.items() if spec.partition("=")[0] == BASELINE), None)
    return [summarize(r, baseline) for r in runs.values()]


def environment() -> dict:
    cuda = torch.cuda.is_available()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name()
        if cuda
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
    }


def markdown_table(report: dict) -> str:
    lines = [
        f"Training throughput, {report['flavor']} at seq {report['seq_len']}, {report['environment']['device']}, "
        f"torch {report['environment']['torch']}, {report['environment']['date']}",
        "",
        f"| variant | micro-batch | tokens/s/device, median (min-max) | vs {BASELINE}, median (min-max) | MFU | "
        "step time | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in report["variants"]:
        if "error" in v:
            lines.append(f"| {v['name']} | {v['micro_batch_size']} | {v['error']} | | | | |")
            continue
        mfu = f"{v['mfu_percent']:.1f}%" if "mfu_percent" in v else "n/a"
        speed, ratio = v["tokens_per_second_spread"], v.get("ratio_to_baseline")
        ratio = f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "n/a"
        lines.append(
            f"| {v['name']} | {v['micro_batch_size']} | {speed['median']:,.0f} "
            f"({speed['min']:,.0f}-{speed['max']:,.0f}) | {ratio} | {mfu} | {v['step_time_s'] * 1000:.0f} ms | "
            f"{v['peak_memory_gib']:.1f} GiB |"
        )
    lines.append("")
    lines.append(
        f"{report['repeats']} interleaved runs per variant after a discarded warm-up run; "
        f"{report['measured_steps']} measured steps each after {report['warmup_steps']} warm-up steps."
    )
    lines.append(
        f"FLOPs per token: {report['flop_formula']} = {report['flops_per_token'] / 1e9:.3f} GFLOP; "
        f"peak {report['peak_bf16_flops'] / 1e12:.0f} TFLOP/s"
        if report["peak_bf16_flops"]
        else f"FLOPs per token: {report['flop_formula']} = {report['flops_per_token'] / 1e9:.3f} GFLOP; "
        "no MFU (no known peak)"
    )
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        raise UserError(
            f"--steps={args.steps} --warmup={args.warmup} --repeats={args.repeats}: expected at least 1 measured step "
            "and 1 repeat"
        )
    model_args = FLAVORS[args.flavor]
    with torch.device("meta"):
        n_without_embedding = count_parameters(Transformer(model_args), exclude_embedding=True)
    env = environment()
    args.flops_per_token = flops_per_token(model_args, n_without_embedding, args.seq_len)
    report = {
        "environment": env,
        "flavor": args.flavor,
        "seq_len": args.seq_len,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "repeats": args.repeats,
        "flops_per_token": args.flops_per_token,
        "flop_formula": "6*N + 12*L*d*T, N without the input embedding",
        "peak_bf16_flops": peak_flops_of(env["device"]) if torch.cuda.is_available() else None,
        "peak_table": dict(PEAK_BF16_FLOPS),
        "variants": [],
    }
    report["variants"] = run_interleaved(args, io.StringIO())
    table = markdown_table(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    run_entry_point(main)
