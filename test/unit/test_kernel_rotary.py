"""The rotary-embedding Triton kernel against its plain-PyTorch reference, forward and gradient."""

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, assert_passes_opcheck, check, compare, randn, refusal_test

from tinytitan.kernels import rotary
from tinytitan.kernels.rotary import rotary_reference, rotary_tables, rotary_triton


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


def bad_calls():
    q, cos, sin = randn(1, 3, 2, 8), randn(3, 8), randn(3, 8)
    return [
        (lambda: rotary_triton(q[0], cos, sin), r"x has shape \(3, 2, 8\): expected 4 dimensions"),
        (lambda: rotary_triton(q, cos[:2], sin), r"cos has shape \(2, 8\): expected \(3, 8\)"),
        (lambda: rotary_triton(q, cos, sin.to(torch.bfloat16)), "sin has dtype torch.bfloat16: expected torch.float32"),
        (lambda: rotary_triton(q[..., :7], cos[:, :7], sin[:, :7]), "expected an even head_dim"),
    ]


test_bad_inputs_are_refused_with_a_clear_error = refusal_test(bad_calls)


def test_custom_op_passes_opcheck():
    assert_passes_opcheck(rotary.rotary, (randn(2, 3, 4, 8).requires_grad_(), randn(3, 8), randn(3, 8), True))
