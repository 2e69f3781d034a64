"""The kernels in a fresh Python, where this process cannot go: compiled ahead of time for a GPU
without the interpreter, and the references where Triton is not installed."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT

AOT_SCRIPT = r"""
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from tinytitan.kernels import cross_entropy, rmsnorm, rotary, swiglu

P = {"bf16": "*bf16", "f32": "*fp32", "i64": "*i64"}
kernels = [
    # TinyLlama's widths, with the number of warps the wrappers launch them with.
    (rmsnorm._rms_norm_forward_kernel, "bf16 f32 f32 f32 i32 i32 fp32", {"BLOCK": 2048}, 4),
    (rmsnorm._rms_norm_backward_kernel, "f32 bf16 f32 f32 bf16 f32 i32 i32 i32 i32", {"BLOCK": 2048}, 4),
    (swiglu._swiglu_forward_kernel, "bf16 bf16 bf16 i32", {"BLOCK": 1024}, 4),
    (swiglu._swiglu_backward_kernel, "bf16 bf16 bf16 bf16 bf16 i32", {"BLOCK": 1024}, 4),
    (rotary._rotary_kernel, "bf16 f32 f32 bf16 i32 i32 i32 i32 i32 i32 i32 i32",
     {"BLOCK_HEADS": 32, "BLOCK_HALF": 32, "TRANSPOSE": False}, 4),
    (rotary._rotary_kernel, "bf16 f32 f32 bf16 i32 i32 i32 i32 i32 i32 i32 i32",
     {"BLOCK_HEADS": 32, "BLOCK_HALF": 32, "TRANSPOSE": True}, 4),
    (cross_entropy._logsumexp_loss_kernel, "bf16 i64 f32 f32 i32 i32 i32", {"BLOCK_V": 4096}, 8),
    (cross_entropy._logits_grad_kernel, "bf16 i64 f32 f32 i32 i32 i32", {"BLOCK_V": 4096}, 8),
]
for kernel, types, constexprs, num_warps in kernels:
    names = [name for name in kernel.arg_names if name not in constexprs]
    signature = {name: P.get(t, t) for name, t in zip(names, types.split())}
    signature.update({name: "constexpr" for name in constexprs})
    compiled = compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps})
    assert compiled.asm["cubin"], kernel.__name__
    print("compiled", kernel.__name__)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the other tests compile and run the kernels for real")
def test_kernels_compile_for_a_gpu_without_one():
    """The interpreter runs Python and accepts code that Triton's compiler would reject; so compile
    every kernel ahead of time for an H100 (sm_90), in a process without the interpreter."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("compiled") == 8, result.stdout


def test_references_work_where_triton_is_missing():
    """Triton is Linux-only: elsewhere the model still imports the references, and the Triton
    functions say what is missing."""
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` fail
        "import torch\n"
        "import tinytitan.models.llama\n"
        "from tinytitan.kernels.rmsnorm import rms_norm_reference, rms_norm_triton\n"
        "assert rms_norm_reference(torch.ones(2, 4), torch.ones(4), 1e-5).shape == (2, 4)\n"
        "rms_norm_triton(torch.ones(2, 4), torch.ones(4), 1e-5)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert (
        result.returncode != 0 and "RuntimeError: rms_norm_triton needs Triton, which is not installed" in result.stderr
    ), result.stderr
