"""The SwiGLU Triton kernel against its plain-PyTorch reference, forward and both gradients."""

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, assert_passes_opcheck, compare, randn, refusal_test

from tinytitan.kernels import swiglu
from tinytitan.kernels.swiglu import swiglu_reference, swiglu_triton


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


def bad_calls():
    x = randn(2, 3, 8)
    return [
        (lambda: swiglu_triton(x, x[..., :4]), r"up has shape \(2, 3, 4\): expected the shape of gate \(2, 3, 8\)"),
        (
            lambda: swiglu_triton(x, x.to(torch.bfloat16)),
            "up has dtype torch.bfloat16: expected the dtype of gate, torch.float32",
        ),
        (lambda: swiglu_triton(x.long(), x.long()), "gate has dtype torch.int64"),
    ]


test_bad_inputs_are_refused_with_a_clear_error = refusal_test(bad_calls)


def op_samples():
    return [
        (swiglu.swiglu_forward, (randn(4, 33).requires_grad_(), randn(4, 33).requires_grad_())),
        (swiglu.swiglu_backward, (randn(4, 33), randn(4, 33), randn(4, 33))),
    ]


@pytest.mark.parametrize("case", range(2))
def test_custom_ops_pass_opcheck(case):
    assert_passes_opcheck(*op_samples()[case])
