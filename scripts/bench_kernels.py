#!/usr/bin/env python3
"""Forward + backward time and peak memory of each fused kernel against the alternatives.

For RMSNorm, SwiGLU, rotary (q and k) and the fused output projection + loss, at TinyLlama's
shapes in bf16 (16384 tokens, dim 2048, ffn 5632, 32 query / 4 key-value heads of 64, vocabulary
32000), it times forward + backward (median of --iters, CUDA events) of:
  triton   ours (tinytitan.kernels.*_triton)
  eager    the plain-PyTorch reference
  compile  torch.compile of the reference
  liger    Liger-Kernel's version, when liger_kernel is installed
and attention (seq 2048, 32 query / 4 key-value heads of 64), causal and within packed documents, as
  eager    PyTorch's SDPA (causal; for documents, with a dense boolean mask)
  flex     FlexAttention with a BlockMask (tinytitan.models.attention)
  flash    flash-attn (flash_attn_func; flash_attn_varlen_func for documents), when installed
Each implementation is warmed up first (--warmup iterations: compilation, autotuning), then the
implementations of a kernel are timed --repeats times, interleaved (A B C A B C ...), so that a
slow moment of the machine does not fall on one of them alone; a row gives the median over the
repeats of each repeat's median, the min-max spread, and the median (min-max) of the per-repeat
ratio to eager. It prints one Markdown table: time, the peak memory above what the inputs hold, effective GB/s of
the memory-bound kernels (the least traffic fwd + bwd must move, over the time) as a share of a
measured device-to-device copy, and TFLOP/s of the loss (6 x tokens x vocab x dim) and of attention
(fwd 4 x d x heads per query-key pair the mask lets through, bwd 2.5 times that).

Without CUDA it runs a smoke version (tiny shapes, Triton interpreter, 2 iterations) so that the
script cannot rot; its numbers mean nothing.

    python scripts/bench_kernels.py [--json results.json] [--iters 20] [--smoke]
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

from tinytitan.errors import UserError, run_entry_point  # noqa: E402
from tinytitan.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton  # noqa: E402
from tinytitan.kernels.rmsnorm import rms_norm_reference, rms_norm_triton  # noqa: E402
from tinytitan.kernels.rotary import rotary_reference, rotary_tables, rotary_triton  # noqa: E402
from tinytitan.kernels.swiglu import swiglu_reference, swiglu_triton  # noqa: E402
from tinytitan.models import attention  # noqa: E402

TINYLLAMA = dict(batch=8, seq=2048, dim=2048, ffn=5632, heads=32, kv_heads=4, head_dim=64, vocab=32000)
SMOKE = dict(batch=2, seq=32, dim=64, ffn=96, heads=4, kv_heads=2, head_dim=16, vocab=300)
EPS = 1e-5


@dataclass
class Case:
    """One kernel: how to make its inputs (fresh leaves) and its upstream gradients, its
    implementations, and the work that the throughput columns divide by the time."""

    name: str
    make_inputs: Callable[[], list]
    make_upstream: Callable[[], list]
    impls: dict[str, Callable] = field(default_factory=dict)
    bytes_moved: int | None = None
    flops: int | None = None


def build_cases(shape: dict, device: str, dtype: torch.dtype, compile_backend: str) -> list[Case]:
    tokens = shape["batch"] * shape["seq"]
    dim, ffn, vocab = shape["dim"], shape["ffn"], shape["vocab"]
    batch, seq, heads, kv_heads, head_dim = (shape[k] for k in ("batch", "seq", "heads", "kv_heads", "head_dim"))
    size = torch.finfo(dtype).bits // 8

    def leaf(*dims, scale=1.0, offset=0.0):
        return (torch.randn(*dims, device=device) * scale + offset).to(dtype).requires_grad_()

    def random(*dims):
        return torch.randn(*dims, device=device).to(dtype)

    cos, sin = rotary_tables(head_dim, seq, 10000.0, device=device)
    labels = torch.randint(0, vocab, (tokens,), device=device)

    rms = Case(
        "rms_norm",
        lambda: [leaf(tokens, dim), leaf(dim, scale=0.1, offset=1.0)],
        lambda: [random(tokens, dim)],
        {"triton": lambda x, w: rms_norm_triton(x, w, EPS), "eager": lambda x, w: rms_norm_reference(x, w, EPS)},
        bytes_moved=5 * tokens * dim * size,
    )  # x, y forward; dy, x, dx backward
    swiglu = Case(
        "swiglu",
        lambda: [leaf(tokens, ffn), leaf(tokens, ffn)],
        lambda: [random(tokens, ffn)],
        {"triton": swiglu_triton, "eager": swiglu_reference},
        bytes_moved=8 * tokens * ffn * size,
    )  # gate, up, out forward; dy, gate, up, dgate, dup backward
    rotary = Case(
        "rotary",
        lambda: [leaf(batch, seq, heads, head_dim), leaf(batch, seq, kv_heads, head_dim)],
        lambda: [random(batch, seq, heads, head_dim), random(batch, seq, kv_heads, head_dim)],
        {
            "triton": lambda q, k: (rotary_triton(q, cos, sin), rotary_triton(k, cos, sin)),
            "eager": lambda q, k: (rotary_reference(q, cos, sin), rotary_reference(k, cos, sin)),
        },
        bytes_moved=4 * tokens * (heads + kv_heads) * head_dim * size,
    )  # in and out, both ways
    loss = Case(
        "linear_cross_entropy",
        lambda: [leaf(tokens, dim), leaf(vocab, dim, scale=dim**-0.5)],
        lambda: [None],
        {
            "triton": lambda h, w: linear_cross_entropy_triton(h, w, labels),
            "eager": lambda h, w: linear_cross_entropy_reference(h, w, labels),
        },
        flops=6 * tokens * vocab * dim,
    )  # logits, d(hidden), d(weight)
    cases = [rms, swiglu, rotary, loss]
    add_compiled(cases, compile_backend)
    add_liger(cases, cos, sin, labels)
    return cases + attention_cases(shape, device, leaf, random)


BOS = 1


def packed_documents(batch: int, seq: int, device: str) -> torch.Tensor:
    """Windows of random tokens with a bos at each document start: lengths drawn uniformly from 1
    to seq/2 (seeded), so a window holds a few documents of varied length, cut at its end."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, 1000, (batch, seq), generator=generator)
    for row in tokens:
        start = int(torch.randint(0, seq // 2, (), generator=generator))  # the first one began earlier
        while start < seq:
            row[start] = BOS
            start += 1 + int(torch.randint(0, seq // 2, (), generator=generator))
    return tokens.to(device)


def attention_cases(shape: dict, device: str, leaf, random) -> list[Case]:
    """Attention forward + backward, plain causal and within packed documents: FLOPs count the
    query-key pairs each mask lets through (fwd 4 x d per pair and head, bwd 2.5 times the fwd)."""
    batch, seq, heads, kv_heads, head_dim = (shape[k] for k in ("batch", "seq", "heads", "kv_heads", "head_dim"))
    tokens = packed_documents(batch, seq, device)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=device).tril()
    ids = attention.document_ids(tokens, BOS)
    documents = causal & (ids[:, :, None] == ids[:, None])
    flash = importlib.util.find_spec("flash_attn") is not None and device == "cuda"
    cases = []
    for name, masked, allowed in (
        ("attention_causal", False, causal.expand(batch, seq, seq)),
        ("attention_documents", True, documents),
    ):
        options = attention.AttentionOptions("flex", document_masking=masked, bos_id=BOS)
        flex_mask = attention.document_layout(tokens, options).mask
        dense = allowed[:, None]  # [batch, 1, seq, seq] for SDPA

        def eager(q, k, v, dense=dense, masked=masked):
            if not masked:
                return attention.sdpa_attention(q, k, v)
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=dense, enable_gqa=True
            )
            return out.transpose(1, 2)

        impls = {"eager": eager, "flex": lambda q, k, v, m=flex_mask: attention.flex_attention(q, k, v, m)}
        if flash:
            lengths = attention.cumulative_lengths(tokens, BOS) if masked else None
            impls["flash"] = lambda q, k, v, m=lengths: attention.flash_attention(q, k, v, m)
        cases.append(
            Case(
                name,
                lambda: [
                    leaf(batch, seq, heads, head_dim),
                    leaf(batch, seq, kv_heads, head_dim),
                    leaf(batch, seq, kv_heads, head_dim),
                ],
                lambda: [random(batch, seq, heads, head_dim)],
                impls,
                flops=14 * int(allowed.sum()) * heads * head_dim,
            )
        )
    return cases


def add_liger(cases: list[Case], cos, sin, labels) -> None:
    try:
        from liger_kernel.transformers import functional as liger
    except ImportError:
        return
    by_name = {case.name: case for case in cases}
    by_name["rms_norm"].impls["liger"] = lambda x, w: liger.liger_rms_norm(x, w, EPS)
    by_name["swiglu"].impls["liger"] = liger.liger_swiglu

    # Liger's rope takes q and k as [batch, heads, seq, head_dim] and cos/sin as [1, seq, head_dim].
    def liger_rope(q, k):
        q_out, k_out = liger.liger_rope(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
        return q_out.transpose(1, 2), k_out.transpose(1, 2)

    by_name["rotary"].impls["liger"] = liger_rope
    by_name["linear_cross_entropy"].impls["liger"] = lambda h, w: liger.liger_fused_linear_cross_entropy(h, w, labels)


def add_compiled(cases: list[Case], backend: str) -> None:
    for case in cases:
        case.impls["compile"] = torch.compile(case.impls["eager"], backend=backend)


class Clock:
    """Elapsed milliseconds of a callable: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)


def forward_backward(fn, inputs: list, upstream: list) -> None:
    outputs = fn(*inputs)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    torch.autograd.backward(outputs, upstream)
    for t in inputs:
        t.grad = None


def prepare(case: Case, impl: str, clock: Clock, warmup: int):
    """The implementation's timed call, warmed up, and its peak memory (MiB above the inputs; CUDA only)."""
    fn, inputs, upstream = case.impls[impl], case.make_inputs(), case.make_upstream()
    run = lambda: forward_backward(fn, inputs, upstream)  # noqa: E731
    for _ in range(warmup):  # compilation, autotuning, allocator growth
        run()
    peak_mib = None
    if clock.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    return run, peak_mib


def measure_case(case: Case, clock: Clock, iters: int, warmup: int, repeats: int) -> list[dict]:
    """A row per implementation: the median of `iters` timings, `repeats` times interleaved."""
    runs, rows, times = {}, {}, {}
    for impl in case.impls:
        try:
            runs[impl], peak_mib = prepare(case, impl, clock, warmup)
            rows[impl], times[impl] = {"kernel": case.name, "implementation": impl, "peak_mib": peak_mib}, []
        except Exception as error:  # one failing implementation (out of memory, say) is a row, not the end
            rows[impl] = error_row(case.name, impl, error)
    for _ in range(repeats):
        for impl, run in list(runs.items()):
            try:
                times[impl].append(statistics.median(clock(run) for _ in range(iters)))
            except Exception as error:
                rows[impl], _ = error_row(case.name, impl, error), runs.pop(impl)
    for impl in runs:
        rows[impl].update(timing(case, times[impl], times.get("eager") if "eager" in runs else None))
    return list(rows.values())


def error_row(kernel: str, impl: str, error: Exception) -> dict:
    message = f"{type(error).__name__}: {error}".splitlines()[0][:200].replace("|", "/")
    return {"kernel": kernel, "implementation": impl, "error": message}


def timing(case: Case, times: list[float], eager_times: list[float] | None) -> dict:
    ms = statistics.median(times)
    result = {"ms": ms, "ms_min": min(times), "ms_max": max(times), "repeats_ms": times}
    if eager_times:
        ratios = [eager / mine for eager, mine in zip(eager_times, times)]
        result["vs_eager"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    if case.bytes_moved:
        result["gb_per_s"] = case.bytes_moved / (ms * 1e-3) / 1e9
    if case.flops:
        result["tflop_per_s"] = case.flops / (ms * 1e-3) / 1e12
    return result


def copy_bandwidth(device: str, clock: Clock, n_bytes: int, iters: int) -> float:
    """GB/s of a device-to-device copy, counting the read and the write."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = statistics.median(clock(lambda: dst.copy_(src)) for _ in range(max(iters, 3)))
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def markdown(rows: list[dict], copy_gb_per_s: float) -> str:
    def number(value, digits=1):
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [
        "| kernel | implementation | fwd+bwd ms, median (min-max) | vs eager, median (min-max) | peak MiB | GB/s | "
        "% of copy | TFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['kernel']} | {row['implementation']} | error: {row['error']} | | | | | |")
            continue
        ratio = row.get("vs_eager")
        ratio = f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "-"
        gb = row.get("gb_per_s")
        lines.append(
            f"| {row['kernel']} | {row['implementation']} | "
            f"{row['ms']:.3f} ({row['ms_min']:.3f}-{row['ms_max']:.3f}) | "
            f"{ratio} | "
            f"{number(row['peak_mib'])} | {number(gb)} | {number(gb and 100 * gb / copy_gb_per_s)} | "
            f"{number(row.get('tflop_per_s'))} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and 2 iterations (always so without CUDA)")
    parser.add_argument("--iters", type=int, help="timed iterations per implementation (default 20; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (default 5; smoke 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats of each kernel's timings (default 3; smoke 2)")
    parser.add_argument("--json", type=str, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        raise UserError(f"--iters {args.iters}: expected an integer >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise UserError(f"--warmup {args.warmup}: expected an integer >= 0")
    if args.repeats is not None and args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: expected an integer >= 1")
    args.smoke = args.smoke or not torch.cuda.is_available()
    args.iters = args.iters or (2 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.repeats = args.repeats or (2 if args.smoke else 3)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda" if cuda else "cpu"), torch.bfloat16
    shape = SMOKE if args.smoke else TINYLLAMA
    torch.manual_seed(0)
    clock = Clock(cuda)
    # On CPU the smoke run traces compile without generating C++: the path is kept, the minutes are not.
    cases = build_cases(shape, device, dtype, "inductor" if cuda else "aot_eager")
    copy_gb_per_s = copy_bandwidth(device, clock, 2**30 if cuda else 2**24, args.iters)

    rows = []
    for case in cases:
        rows += measure_case(case, clock, args.iters, args.warmup, args.repeats)
        if cuda:
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    what = "smoke run (numbers mean nothing)" if args.smoke else "TinyLlama shapes"
    print(
        f"device: {device_name}; torch {torch.__version__}; {what}: {shape}; {dtype}; median of {args.iters}, "
        f"{args.repeats} interleaved repeats; "
        f"device copy {copy_gb_per_s:,.0f} GB/s"
    )
    if not any("liger" in case.impls for case in cases):
        print("Liger-Kernel is not installed: no liger rows")
    print(markdown(rows, copy_gb_per_s))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": device_name,
                    "torch": torch.__version__,
                    "smoke": args.smoke,
                    "shape": shape,
                    "dtype": str(dtype),
                    "iters": args.iters,
                    "repeats": args.repeats,
                    "copy_gb_per_s": copy_gb_per_s,
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    run_entry_point(main)  # a bad argument: one line and exit status 2
