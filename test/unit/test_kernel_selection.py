"""The kernels as a set, as the model selects them: the Triton set against the torch references
on a miniature of the model's path (compiled, and at TinyLlama's widths on a GPU) and the guards
every kernel shares. Their compilation for a GPU and the references where Triton is missing run in
a fresh Python: test/e2e/test_kernel_environments.py."""

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, compare, linear_loss_fns, lm_inputs, randn, relative_error

from tinytitan.kernels import _common
from tinytitan.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton
from tinytitan.kernels.rmsnorm import rms_norm_reference, rms_norm_triton
from tinytitan.kernels.rotary import rotary_reference, rotary_tables, rotary_triton
from tinytitan.kernels.swiglu import swiglu_reference, swiglu_triton


def test_cpu_tensors_are_refused_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)
    with pytest.raises(ValueError, match="x is on cpu: expected a CUDA tensor"):
        rms_norm_triton(torch.ones(2, 4), torch.ones(4), 1e-5)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_a_sharded_parameter_is_refused_with_a_hint():
    """Outside the forward of its FSDP module a parameter is a DTensor shard: say where to call instead."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        weight = DTensor.from_local(torch.ones(8), init_device_mesh("cpu", (1,)), [Shard(0)])
        with pytest.raises(ValueError, match="weight is a DTensor .*inside the forward of the FSDP-wrapped module"):
            rms_norm_triton(torch.ones(2, 8, device=DEVICE), weight, 1e-5)
    finally:
        dist.destroy_process_group()


def small_model_piece(x, norm_weight, qkv, cos, sin, w_gate_up, out_weight, labels, use_triton):
    """The kernels' path through a decoder, in miniature: norm, rotary on q/k views, SwiGLU, loss."""
    heads, head_dim = 2, 8
    norm = rms_norm_triton if use_triton else rms_norm_reference
    rotary = rotary_triton if use_triton else rotary_reference
    swiglu = swiglu_triton if use_triton else swiglu_reference
    h = norm(x, norm_weight, 1e-5)
    projected = h @ qkv.t()
    q = projected[..., : heads * head_dim].unflatten(-1, (heads, head_dim))
    k = projected[..., heads * head_dim :].unflatten(-1, (heads, head_dim))
    h = h + (rotary(q, cos, sin) * rotary(k, cos, sin)).flatten(-2)
    h = swiglu(*(h @ w_gate_up.t()).chunk(2, dim=-1))
    flat_h, flat_labels = h.flatten(0, 1), labels.flatten()
    if use_triton:
        return linear_cross_entropy_triton(flat_h, out_weight, flat_labels)
    return linear_cross_entropy_reference(flat_h, out_weight, flat_labels)


def piece_inputs(batch=2, seq=5, dim=16, vocab=37):
    torch.manual_seed(7)
    cos, sin = rotary_tables(8, seq, 10000.0, device=DEVICE)
    labels = torch.randint(0, vocab, (batch, seq), device=DEVICE)
    labels[0, 0] = -100
    params = [randn(dim) + 1, randn(2 * dim, dim) * 0.3, randn(2 * dim, dim) * 0.3, randn(vocab, dim) * 0.3]
    return randn(batch, seq, dim), params, cos, sin, labels


def piece_loss_and_grads(fn, x, params, cos, sin, labels, use_triton):
    x = x.detach().clone().requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in params]
    norm_weight, qkv, w_gate_up, out_weight = params
    loss = fn(x, norm_weight, qkv, cos, sin, w_gate_up, out_weight, labels, use_triton)
    return [loss.detach(), *torch.autograd.grad(loss, [x, *params])]


def test_compiles_without_graph_breaks_and_matches_eager():
    """torch.compile(fullgraph=True) traces the custom ops through their fake and autograd
    registrations (aot_eager: the same tracing as inductor, without generating code on CPU)."""
    x, params, cos, sin, labels = piece_inputs()
    compiled = torch.compile(small_model_piece, fullgraph=True, backend="aot_eager")
    ours = piece_loss_and_grads(compiled, x, params, cos, sin, labels, use_triton=True)
    reference = piece_loss_and_grads(small_model_piece, x, params, cos, sin, labels, use_triton=False)
    for i, (a, b) in enumerate(zip(ours, reference)):
        error = relative_error(a, b)
        assert error <= 1e-5, f"output {i}: relative error {error:.2e}"


# ---------------------------------------------------------------------------------------------
# CUDA only: real compilation, realistic shapes


@pytest.mark.gpu
def test_inductor_compile_of_the_kernels_matches_eager():
    x, params, cos, sin, labels = piece_inputs(batch=4, seq=64, dim=16, vocab=1000)
    compiled = torch.compile(small_model_piece, fullgraph=True)
    ours = piece_loss_and_grads(compiled, x, params, cos, sin, labels, use_triton=True)
    reference = piece_loss_and_grads(small_model_piece, x, params, cos, sin, labels, use_triton=False)
    for i, (a, b) in enumerate(zip(ours, reference)):
        error = relative_error(a, b)
        assert error <= 1e-4, f"output {i}: relative error {error:.2e}"  # TF32-free, but fused differently


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_at_tinyllama_widths(dtype):
    torch.manual_seed(8)
    x, weight = randn(4, 256, 2048, dtype=dtype), randn(2048, dtype=dtype) * 0.1 + 1
    compare(
        "rms_norm",
        lambda x, w: rms_norm_triton(x, w, 1e-5),
        lambda x, w: rms_norm_reference(x, w, 1e-5),
        [x, weight],
        [0, 1],
        randn(4, 256, 2048, dtype=dtype),
    )
    gate, up = randn(2, 256, 5632, dtype=dtype), randn(2, 256, 5632, dtype=dtype)
    compare("swiglu", swiglu_triton, swiglu_reference, [gate, up], [0, 1], randn(2, 256, 5632, dtype=dtype))
    cos, sin = rotary_tables(64, 512, 10000.0, device=DEVICE)
    q = randn(2, 512, 32 * 64 + 8 * 64, dtype=dtype)[..., : 32 * 64].unflatten(-1, (32, 64))
    compare(
        "rotary",
        lambda q: rotary_triton(q, cos, sin),
        lambda q: rotary_reference(q, cos, sin),
        [q],
        [0],
        randn(2, 512, 32, 64, dtype=dtype),
    )
    hidden, out_weight, labels = lm_inputs(1024, 2048, 32000, dtype, ignored=range(0, 1024, 7))
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy", ours, ref, [hidden, out_weight], [0, 1], None, fp32_tolerance=2e-5)
