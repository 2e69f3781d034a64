"""The RMSNorm Triton kernel against its plain-PyTorch reference, forward and both gradients."""

import pytest
import torch
from kernel_checks import DEVICE, DTYPES, assert_passes_opcheck, compare, randn, refusal_test

from tinytitan.kernels import rmsnorm
from tinytitan.kernels.rmsnorm import rms_norm_reference, rms_norm_triton


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


def bad_calls():
    x, w = randn(2, 3, 8), randn(8)
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
    ]


test_bad_inputs_are_refused_with_a_clear_error = refusal_test(bad_calls)


def op_samples():
    x, w, inv_rms = randn(5, 40), randn(40), randn(5).abs()
    return [
        (rmsnorm.rms_norm_forward, (randn(5, 40).requires_grad_(), randn(40).requires_grad_(), 1e-5)),
        (rmsnorm.rms_norm_backward, (randn(5, 40), x, w, inv_rms)),
    ]


@pytest.mark.parametrize("case", range(2))
def test_custom_ops_pass_opcheck(case):
    assert_passes_opcheck(*op_samples()[case])
