"""What the kernel tests share: comparing a Triton kernel against its plain-PyTorch reference,
forward and every gradient, and the inputs of the loss.

Without CUDA the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1), which
costs about a millisecond per program, so the shapes are small but deliberately awkward: widths that
are not powers of two, row counts that are not multiples of a block, views with gaps.

Tolerances. float32: within 1e-5 of the float32 reference (relative to the largest value of the
tensor, since reductions add in a different order). bfloat16: the reference itself rounds, so both
are measured against a float32 oracle (the reference run on the same values upcast), and ours must
be at most 2.5x as far from it as the bfloat16 reference is, plus half a bfloat16 unit. (Under the
interpreter float32 -> bfloat16 casts truncate instead of rounding to nearest, which doubles the
error of every rounding.)
"""

import pytest
import torch

from tinytitan.kernels.cross_entropy import linear_cross_entropy_reference, linear_cross_entropy_triton

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


def refusal_test(bad_calls):
    """A test, parametrised over `bad_calls()` (pairs of a call and the message it must raise), that
    each call is refused with a ValueError matching its message. Assign it to a test_* name."""

    @pytest.mark.parametrize("case", range(len(bad_calls())))
    def test(case):
        call, message = bad_calls()[case]
        with pytest.raises(ValueError, match=message):
            call()

    return test


def assert_passes_opcheck(op, args) -> None:
    """Schema, fake (meta) functions against the real outputs, autograd registration, AOT dispatch."""
    results = torch.library.opcheck(op, args)
    assert set(results.values()) == {"SUCCESS"}, results


def lm_inputs(n_tokens, dim, vocab, dtype, scale=1.0, ignored=(), seed=0):
    """Last hidden states, an output weight and labels (those at `ignored` set to -100)."""
    torch.manual_seed(seed)
    hidden = randn(n_tokens, dim, dtype=dtype, scale=scale)
    weight = randn(vocab, dim, dtype=dtype, scale=dim**-0.5)
    labels = torch.randint(0, vocab, (n_tokens,), device=DEVICE)
    labels[list(ignored)] = -100
    return hidden, weight, labels


def linear_loss_fns(labels, **kwargs):
    """The fused loss and its reference as functions of (hidden, weight)."""
    return (
        lambda h, w: linear_cross_entropy_triton(h, w, labels, **kwargs),
        lambda h, w: linear_cross_entropy_reference(h, w, labels, **kwargs),
    )
