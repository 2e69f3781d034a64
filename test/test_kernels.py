"""The Triton kernels against their plain-PyTorch references, forward and every gradient.

Without CUDA they run under the Triton interpreter (conftest sets TRITON_INTERPRET=1), which costs
about a millisecond per program, so the shapes are small but deliberately awkward: widths that are
not powers of two, row counts that are not multiples of a block, views with gaps.

Tolerances. float32: within 1e-5 of the float32 reference (relative to the largest value of the
tensor, since reductions add in a different order). bfloat16: the reference itself rounds, so both
are measured against a float32 oracle (the reference run on the same values upcast), and ours must
be at most 2.5x as far from it as the bfloat16 reference is, plus half a bfloat16 unit. (Under the
interpreter float32 -> bfloat16 casts truncate instead of rounding to nearest, which doubles the
error of every rounding.)
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT

from tinytitan.kernels import _common
from tinytitan.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton
from tinytitan.kernels.rmsnorm import rms_norm_reference, rms_norm_triton
from tinytitan.kernels.rotary import rotary_reference, rotary_tables, rotary_triton
from tinytitan.kernels.swiglu import swiglu_reference, swiglu_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16]
BF16_HALF_UNIT = 2.0**-9


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of `expected`."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()


def check(
    name: str,
    ours: torch.Tensor,
    ref: torch.Tensor,
    oracle: torch.Tensor | None,
    fp32_tolerance: float = 1e-5,
    low_precision: bool | None = None,
):
    """`ours` and `ref` computed from the same inputs; `oracle` is the reference on them in float32.
    low_precision: whether bfloat16 took part (by default, whether `ref` is bfloat16)."""
    assert ours.dtype == ref.dtype, f"{name}: dtype {ours.dtype}, reference {ref.dtype}"
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)}, reference {tuple(ref.shape)}"
    assert torch.isfinite(ours).all(), f"{name}: not finite"
    if low_precision is None:
        low_precision = ref.dtype == torch.bfloat16
    if not low_precision:
        error = relative_error(ours, ref)
        assert error <= fp32_tolerance, f"{name}: relative error {error:.2e} > {fp32_tolerance:.0e}"
    else:
        ours_error, ref_error = relative_error(ours, oracle), relative_error(ref, oracle)
        bound = 2.5 * ref_error + BF16_HALF_UNIT
        assert ours_error <= bound, (
            f"{name}: error {ours_error:.2e} vs the float32 oracle; the reference's is {ref_error:.2e}"
        )


def run_with_grads(fn, inputs: list, grad_of: list[int], upstream: torch.Tensor | None, upcast: bool = False):
    """fn(*inputs) and the gradients of <output, upstream> with respect to inputs[i] for i in grad_of;
    with upcast, on float32 copies of the floating inputs (for the oracle)."""
    leaves = []
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().float() if upcast else t.detach()
            t.requires_grad_(i in grad_of)
        leaves.append(t)
    out = fn(*leaves)
    weight = None if upstream is None else upstream.to(out.dtype)
    grads = torch.autograd.grad(out, [leaves[i] for i in grad_of], weight)
    return [out.detach(), *grads]


def compare(
    name: str,
    ours_fn,
    ref_fn,
    inputs: list,
    grad_of: list[int],
    upstream: torch.Tensor | None,
    fp32_tolerance: float = 1e-5,
):
    ours = run_with_grads(ours_fn, inputs, grad_of, upstream)
    ref = run_with_grads(ref_fn, inputs, grad_of, upstream)
    oracle = run_with_grads(ref_fn, inputs, grad_of, None if upstream is None else upstream.float(), upcast=True)
    low_precision = any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in inputs)
    labels = ["output"] + [f"grad of input {i}" for i in grad_of]
    for label, a, b, c in zip(labels, ours, ref, oracle):
        check(f"{name} {label}", a, b, c.float(), fp32_tolerance, low_precision)


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=DEVICE) * scale).to(dtype)


# ---------------------------------------------------------------------------------------------
# RMSNorm


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference(dtype):
    torch.manual_seed(0)
    x = randn(3, 11, 100, dtype=dtype, scale=3.0)  # 33 rows, width not a power of two
    weight = randn(100, dtype=dtype) * 0.2 + 1
    upstream = randn(3, 11, 100, dtype=dtype)
    compare(
        "rms_norm",
        lambda x, w: rms_norm_triton(x, w, 1e-5),
        lambda x, w: rms_norm_reference(x, w, 1e-5),
        [x, weight],
        [0, 1],
        upstream,
    )


def test_rms_norm_of_views_and_mixed_dtypes():
    """A transposed input (rows not evenly strided), and bfloat16 x with a float32 weight, whose
    product is float32 as in the reference."""
    torch.manual_seed(1)
    x = randn(7, 5, 72, dtype=torch.bfloat16).transpose(0, 1)
    weight = randn(72) * 0.2 + 1
    upstream = randn(5, 7, 72)
    compare(
        "rms_norm",
        lambda x, w: rms_norm_triton(x, w, 1e-6),
        lambda x, w: rms_norm_reference(x, w, 1e-6),
        [x, weight],
        [0, 1],
        upstream,
    )
    assert rms_norm_triton(x, weight, 1e-6).dtype == torch.float32
    # As in the reference, the normalised row is rounded to x's dtype before the weight scales it:
    # with a float32 weight of ones, every output is a bfloat16 value.
    y = rms_norm_triton(x, torch.ones(72, device=DEVICE), 1e-6)
    assert torch.equal(y, y.bfloat16().float())


# ---------------------------------------------------------------------------------------------
# SwiGLU


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_matches_reference(dtype):
    torch.manual_seed(2)
    gate = randn(2, 13, 173, dtype=dtype, scale=4.0)  # 4498 elements: not a multiple of the block
    up = randn(2, 13, 173, dtype=dtype)
    compare("swiglu", swiglu_triton, swiglu_reference, [gate, up], [0, 1], randn(2, 13, 173, dtype=dtype))


def test_swiglu_of_halves_of_a_fused_projection():
    torch.manual_seed(3)
    fused = randn(3, 9, 2 * 88, scale=3.0)
    upstream = randn(3, 9, 88)

    def via(fn):
        return lambda fused: fn(*fused.chunk(2, dim=-1))  # two non-contiguous views

    compare("swiglu", via(swiglu_triton), via(swiglu_reference), [fused], [0], upstream)


def test_swiglu_saturates_without_nans():
    gate = torch.tensor([-200.0, -90.0, 0.0, 90.0, 200.0], device=DEVICE, requires_grad=True)
    up = torch.full((5,), 2.0, device=DEVICE, requires_grad=True)
    out = swiglu_triton(gate, up)
    out.sum().backward()
    expected_gate = gate.detach().clone().requires_grad_()
    swiglu_reference(expected_gate, up.detach()).sum().backward()
    # atol: at -90 torch's exp(90) overflows to give 0, ours gives the true -1.5e-37.
    torch.testing.assert_close(out, swiglu_reference(gate.detach(), up.detach()), rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(gate.grad, expected_gate.grad, rtol=1e-6, atol=1e-30)
    torch.testing.assert_close(up.grad, out.detach() / 2, rtol=1e-6, atol=1e-30)


# ---------------------------------------------------------------------------------------------
# Rotary embeddings


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_of_q_and_k_views_of_a_fused_projection(dtype):
    """q and k are strided views of one [batch, seq, (heads + 2 kv) * head_dim] projection, as in
    attention; the upstream gradient is a transposed view, as SDPA's backward gives it."""
    torch.manual_seed(4)
    batch, seq, heads, kv_heads, head_dim = 2, 7, 6, 2, 24  # half = 12: not a power of two
    cos, sin = rotary_tables(head_dim, 16, 10000.0, device=DEVICE)
    cos, sin = cos[:seq], sin[:seq]
    projection = randn(batch, seq, (heads + 2 * kv_heads) * head_dim, dtype=dtype, scale=2.0)
    upstream_q = randn(batch, heads, seq, head_dim, dtype=dtype).transpose(1, 2)
    upstream_k = randn(batch, kv_heads, seq, head_dim, dtype=dtype).transpose(1, 2)

    def q_and_k(rotary):
        def fn(projection):
            q = projection[..., : heads * head_dim].view(batch, seq, heads, head_dim)
            k = projection[..., heads * head_dim : (heads + kv_heads) * head_dim].view(batch, seq, kv_heads, head_dim)
            assert not q.is_contiguous() and not k.is_contiguous()
            q_out, k_out = rotary(q, cos, sin), rotary(k, cos, sin)
            # One scalar to differentiate, whose gradient reaches q_out and k_out as exactly the upstream ones.
            return torch.cat([(q_out * upstream_q).flatten(), (k_out * upstream_k).flatten()]).float().sum()

        return fn

    compare("rotary", q_and_k(rotary_triton), q_and_k(rotary_reference), [projection], [0], None)
    check(
        "rotary q",
        rotary_triton(projection[..., : heads * head_dim].view(batch, seq, heads, head_dim), cos, sin),
        rotary_reference(projection[..., : heads * head_dim].view(batch, seq, heads, head_dim), cos, sin),
        rotary_reference(projection[..., : heads * head_dim].view(batch, seq, heads, head_dim).float(), cos, sin),
    )


def test_rotary_of_a_gapped_last_dimension_and_its_gradient():
    """Every-other-element view (last stride 2) and a non-contiguous upstream gradient; the output
    gradient of the rotation is its transpose, so rotating back recovers the input."""
    torch.manual_seed(5)
    cos, sin = rotary_tables(10, 5, 500.0, device=DEVICE)
    x = randn(3, 5, 3, 20)[..., ::2]
    compare(
        "rotary",
        lambda x: rotary_triton(x, cos, sin),
        lambda x: rotary_reference(x, cos, sin),
        [x],
        [0],
        randn(3, 5, 3, 10),
    )
    x = x.clone().requires_grad_()
    rotated = rotary_triton(x, cos, sin)
    (back,) = torch.autograd.grad(rotated, x, rotated)  # R^T R x = x for a rotation
    torch.testing.assert_close(back, x.detach(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Cross-entropy


def lm_inputs(n_tokens, dim, vocab, dtype, scale=1.0, ignored=(), seed=0):
    torch.manual_seed(seed)
    hidden = randn(n_tokens, dim, dtype=dtype, scale=scale)
    weight = randn(vocab, dim, dtype=dtype, scale=dim**-0.5)
    labels = torch.randint(0, vocab, (n_tokens,), device=DEVICE)
    labels[list(ignored)] = -100
    return hidden, weight, labels


def linear_loss_fns(labels, **kwargs):
    return (
        lambda h, w: linear_cross_entropy_triton(h, w, labels, **kwargs),
        lambda h, w: linear_cross_entropy_reference(h, w, labels, **kwargs),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_matches_reference(dtype):
    # On CPU 45 tokens in 7 chunks (vocab / dim, rounded up) of up to 7 tokens; every third ignored.
    hidden, weight, labels = lm_inputs(45, 48, 301, dtype, ignored=range(0, 45, 3))
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy", ours, ref, [hidden, weight], [0, 1], torch.tensor(1.7, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_of_large_logits(dtype):
    """Logits around +-300: softmax is almost one-hot and exp would overflow without the running
    maximum. In float32 the gradients' error grows with the logits' magnitude (exp turns an
    absolute error of ~300 * 2^-24 in x - lse into that relative error), hence 1e-4."""
    hidden, weight, labels = lm_inputs(30, 40, 257, dtype, scale=100.0, ignored=[4, 5])
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy x100", ours, ref, [hidden, weight], [0, 1], None, fp32_tolerance=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_cross_entropy_over_several_vocabulary_blocks(dtype):
    """A vocabulary over 4096 takes two steps of each row's loop; the largest logits sit in the
    second, so the running maximum must rescale the sum gathered in the first."""
    hidden, weight, labels = lm_inputs(12, 32, 4099, dtype, ignored=[3])
    hidden[:, 0] = 3.0
    weight[4096:, 0] = 8.0  # these rows' logits are about 24, all others a few units at most
    labels[:4] = torch.tensor([0, 4095, 4096, 4098])
    ours, ref = linear_loss_fns(labels)
    compare("linear_cross_entropy 2 blocks", ours, ref, [hidden, weight], [0, 1], None)


def test_linear_cross_entropy_of_views_and_int32_labels():
    hidden, weight, labels = lm_inputs(21, 64, 150, torch.float32, ignored=[0, 20])
    hidden = hidden[:, ::2]  # [21, 32], rows 64 apart
    weight = weight[:, 16:48]  # [150, 32], not contiguous either
    ours = lambda h, w: linear_cross_entropy_triton(h, w, labels.to(torch.int32))  # noqa: E731
    ref = lambda h, w: linear_cross_entropy_reference(h, w, labels)  # noqa: E731 (F.cross_entropy takes int64 only)
    compare("linear_cross_entropy views", ours, ref, [hidden, weight], [0, 1], None)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored_labels_give_zero_loss_and_zero_gradients(dtype):
    hidden, weight, labels = lm_inputs(9, 16, 40, dtype, ignored=range(9))
    hidden.requires_grad_()
    weight.requires_grad_()
    loss = linear_cross_entropy_triton(hidden, weight, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    assert torch.count_nonzero(hidden.grad) == 0 and torch.count_nonzero(weight.grad) == 0


def test_linear_cross_entropy_without_grad_and_under_autocast():
    hidden, weight, labels = lm_inputs(10, 24, 70, torch.float32, ignored=[2])
    with torch.no_grad():
        no_grad = linear_cross_entropy_triton(hidden, weight, labels)
    check("no_grad loss", no_grad, linear_cross_entropy_reference(hidden, weight, labels), None)
    # Under autocast both are cast to bfloat16, as nn.Linear's inputs would be.
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        autocast = linear_cross_entropy_triton(hidden, weight, labels)
    expected = linear_cross_entropy_reference(hidden.bfloat16(), weight.bfloat16(), labels)
    assert autocast.dtype == torch.float32
    assert abs(autocast.item() - expected.item()) <= 1e-5 * abs(expected.item())


def largest_allocation(fn) -> int:
    """The most bytes any one aten op of fn() (its backward included) allocated on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events() if e.name.startswith("aten::"))


@pytest.mark.skipif(
    DEVICE != "cpu", reason="measures CPU allocations; on CUDA see test_fused_loss_never_holds_the_logits"
)
def test_linear_cross_entropy_never_holds_the_logits():
    """The reference makes [tokens, vocab] float32 logits in one allocation; the fused loss makes
    them a chunk at a time (hidden is [200, 16], so a chunk holds about that much)."""
    hidden, weight, labels = lm_inputs(200, 16, 300, torch.float32)
    hidden.requires_grad_()
    weight.requires_grad_()
    logits_bytes = 200 * 300 * 4
    assert largest_allocation(lambda: linear_cross_entropy_reference(hidden, weight, labels).backward()) >= logits_bytes
    assert (
        largest_allocation(lambda: linear_cross_entropy_triton(hidden, weight, labels).backward()) <= logits_bytes / 4
    )


def test_out_of_range_label_makes_the_loss_nan():
    hidden, weight, labels = lm_inputs(4, 8, 20, torch.float32)
    labels[1] = 20
    assert torch.isnan(linear_cross_entropy_triton(hidden, weight, labels))


# ---------------------------------------------------------------------------------------------
# Guards


def bad_calls():
    bf16 = torch.bfloat16
    x, w = randn(2, 3, 8), randn(8)
    h, W, labels = randn(4, 8), randn(10, 8), torch.zeros(4, dtype=torch.long, device=DEVICE)
    q, cos, sin = randn(1, 3, 2, 8), randn(3, 8), randn(3, 8)
    return [
        (
            lambda: rms_norm_triton(x.half(), w, 1e-5),
            "x has dtype torch.float16: expected torch.float32 or torch.bfloat16",
        ),
        (lambda: rms_norm_triton(x, randn(7), 1e-5), r"weight has shape \(7,\): expected \(8,\)"),
        (lambda: rms_norm_triton(x, w[None], 1e-5), r"weight has shape \(1, 8\): expected 1 dimensions"),
        (lambda: rms_norm_triton(x.sum(), w, 1e-5), r"x has shape \(\): expected at least 1 dimension"),
        (lambda: rms_norm_triton(x, w, -1.0), "eps is -1.0: expected a non-negative number"),
        (lambda: rms_norm_triton(x.tolist(), w, 1e-5), "x is a list: expected a torch.Tensor"),
        (lambda: rms_norm_triton(x, w.to("meta"), 1e-5), "x on .*, weight on meta: expected all on one device"),
        (lambda: swiglu_triton(x, x[..., :4]), r"up has shape \(2, 3, 4\): expected the shape of gate \(2, 3, 8\)"),
        (
            lambda: swiglu_triton(x, x.to(bf16)),
            "up has dtype torch.bfloat16: expected the dtype of gate, torch.float32",
        ),
        (lambda: swiglu_triton(x.long(), x.long()), "gate has dtype torch.int64"),
        (lambda: rotary_triton(q[0], cos, sin), r"x has shape \(3, 2, 8\): expected 4 dimensions"),
        (lambda: rotary_triton(q, cos[:2], sin), r"cos has shape \(2, 8\): expected \(3, 8\)"),
        (lambda: rotary_triton(q, cos, sin.to(bf16)), "sin has dtype torch.bfloat16: expected torch.float32"),
        (lambda: rotary_triton(q[..., :7], cos[:, :7], sin[:, :7]), "expected an even head_dim"),
        (
            lambda: linear_cross_entropy_triton(h[None], W, labels),
            r"hidden has shape \(1, 4, 8\): expected 2 dimensions",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W[:, :6], labels),
            r"weight has shape \(10, 6\): expected \[vocab, 8\]",
        ),
        (lambda: linear_cross_entropy_triton(h, W, labels[:3]), r"labels has shape \(3,\): expected \(4,\)"),
        (
            lambda: linear_cross_entropy_triton(h, W, labels.float()),
            "labels has dtype torch.float32: expected torch.int32 or torch.int64",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W.to(bf16), labels),
            "weight has dtype torch.bfloat16: expected the dtype of hidden, torch.float32",
        ),
        (
            lambda: linear_cross_entropy_triton(h, W, labels, ignore_index=-1.5),
            "ignore_index is -1.5: expected an integer",
        ),
    ]


@pytest.mark.parametrize("case", range(len(bad_calls())))
def test_bad_inputs_are_refused_with_a_clear_error(case):
    call, message = bad_calls()[case]
    with pytest.raises(ValueError, match=message):
        call()


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


# ---------------------------------------------------------------------------------------------
# torch.library registration and compilation


def op_samples():
    from tinytitan.kernels import cross_entropy, rmsnorm, rotary, swiglu

    def leaf(*shape):
        return randn(*shape).requires_grad_()

    labels = torch.tensor([1, 2, -100, 4, 5, 49], device=DEVICE)
    x, w, lse = randn(5, 40), randn(40), randn(5)
    return [
        (rmsnorm.rms_norm_forward, (leaf(5, 40), leaf(40), 1e-5)),
        (rmsnorm.rms_norm_backward, (randn(5, 40), x, w, lse.abs())),
        (swiglu.swiglu_forward, (leaf(4, 33), leaf(4, 33))),
        (swiglu.swiglu_backward, (randn(4, 33), randn(4, 33), randn(4, 33))),
        (rotary.rotary, (leaf(2, 3, 4, 8), randn(3, 8), randn(3, 8), True)),
        (cross_entropy.linear_cross_entropy, (leaf(6, 16), leaf(50, 16), labels, -100, True)),
        (cross_entropy.linear_cross_entropy, (randn(6, 16), randn(50, 16), labels, -100, False)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_custom_ops_pass_opcheck(case):
    """Schema, fake (meta) functions against the real outputs, autograd registration, AOT dispatch."""
    op, args = op_samples()[case]
    results = torch.library.opcheck(op, args)
    assert set(results.values()) == {"SUCCESS"}, results


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


# ---------------------------------------------------------------------------------------------
# Benchmark script


def test_bench_kernels_smoke_run_prints_its_table():
    result = subprocess.run(
        [sys.executable, "scripts/bench_kernels.py", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| kernel | implementation |"), result.stdout
    for kernel in ("rms_norm", "swiglu", "rotary", "linear_cross_entropy"):
        rows = [line for line in table if line.startswith(f"| {kernel} |")]
        assert any("| triton |" in row for row in rows) and any("| eager |" in row for row in rows), result.stdout
        assert all(re.search(r"\| \d+\.\d+ \|", row) for row in rows), rows


# ---------------------------------------------------------------------------------------------
# CUDA only: real compilation, realistic shapes, memory


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


@pytest.mark.gpu
def test_fused_loss_never_holds_the_logits():
    """At the benchmark's 16384 tokens x 32000 vocabulary the bf16 logits alone take 1000 MiB (and
    the reference also makes float32 copies); the fused loss, in chunks of 4096 tokens, must stay
    under one bf16 copy, and still agree with the reference."""
    hidden, weight, labels = lm_inputs(16384, 2048, 32000, torch.bfloat16, ignored=range(0, 16384, 5))
    hidden.requires_grad_()
    weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = linear_cross_entropy_triton(hidden, weight, labels)
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 16384 * 32000 * 2, f"peak {extra / 2**20:.0f} MiB above the inputs"
    ours = [loss.detach(), hidden.grad, weight.grad]
    ref = run_with_grads(lambda h, w: linear_cross_entropy_reference(h, w, labels), [hidden, weight], [0, 1], None)
    oracle = run_with_grads(
        lambda h, w: linear_cross_entropy_reference(h, w, labels), [hidden, weight], [0, 1], None, upcast=True
    )
    for name, a, b, c in zip(["loss", "d(hidden)", "d(weight)"], ours, ref, oracle):
        check(name, a, b, c, low_precision=True)
