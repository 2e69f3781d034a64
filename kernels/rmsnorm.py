"""RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight, normalised in float32.

`rms_norm_reference` is plain PyTorch (the oracle); `rms_norm_triton` is the fused Triton version
with the same semantics: one pass over each row forward, keeping one float32 inverse RMS per row
for the backward, which computes dX per row and reduces dW in float32 (partial sums per program,
then one sum over programs).
"""

import torch
from torch import Tensor

from ._common import (
    check_same_device,
    check_tensor,
    jit,
    last_dim_contiguous,
    num_warps,
    persistent_programs,
    require_triton,
    tl,
    triton,
)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise the last dimension of `x` in float32, cast back, then scale (as Llama and HF do)."""
    x32 = x.float()
    inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * (x32 * inv_rms).to(x.dtype)


@jit
def _rms_norm_forward_kernel(x_ptr, weight_ptr, y_ptr, inv_rms_ptr, x_row_stride, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2^31 on large inputs
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(inv_rms_ptr + row, inv_rms)
    # Like the reference: the normalised row is rounded to x's dtype before the weight scales it.
    normed = (x * inv_rms).to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, (normed * weight).to(y_ptr.dtype.element_ty), mask=mask)


@jit
def _rms_norm_backward_kernel(
    dy_ptr,
    x_ptr,
    weight_ptr,
    inv_rms_ptr,
    dx_ptr,
    dweight_partial_ptr,
    n_rows,
    n_cols,
    dy_row_stride,
    x_row_stride,
    BLOCK: tl.constexpr,
):
    # Grid-stride over rows: each program keeps its own float32 partial sum of dW in registers.
    program = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dweight = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(program, n_rows, tl.num_programs(0)):
        row = tl.cast(r, tl.int64)
        x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + row * dy_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        inv_rms = tl.load(inv_rms_ptr + row)
        x_hat = x * inv_rms
        g = dy * weight
        # x_hat = x * inv_rms(x): the direct term, minus the part along x_hat that changes the RMS.
        dx = inv_rms * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
        tl.store(dx_ptr + row * n_cols + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        # The weight scaled the normalised row as rounded to x's dtype (see the forward).
        dweight += dy * x_hat.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(dweight_partial_ptr + program * n_cols + cols, dweight, mask=mask)


def _rows(t: Tensor) -> Tensor:
    """t as [rows, last dim], without a copy where the strides allow."""
    return last_dim_contiguous(t.reshape(-1, t.shape[-1]))


@torch.library.custom_op("tinytitan::rms_norm_forward", mutates_args=())
def rms_norm_forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y, inv_rms): y like the reference (dtype promoted from x and weight), inv_rms float32 per row."""
    x2 = _rows(x)
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    inv_rms = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    n_rows, n_cols = x2.shape
    if n_rows:
        block = triton.next_power_of_2(n_cols)
        _rms_norm_forward_kernel[(n_rows,)](
            x2, weight.contiguous(), y, inv_rms, x2.stride(0), n_cols, eps, BLOCK=block, num_warps=num_warps(block)
        )
    return y, inv_rms


@rms_norm_forward.register_fake
def _(x, weight, eps):
    return (
        x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype)),
        x.new_empty(x.shape[:-1], dtype=torch.float32),
    )


@torch.library.custom_op("tinytitan::rms_norm_backward", mutates_args=())
def rms_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, inv_rms: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dweight) for the output gradient dy; dweight is summed in float32, then cast to weight's dtype."""
    x2, dy2 = _rows(x), _rows(dy)
    n_rows, n_cols = x2.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    programs = persistent_programs(x.device, n_rows)
    dweight_partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    if n_rows:
        block = triton.next_power_of_2(n_cols)
        _rms_norm_backward_kernel[(programs,)](
            dy2,
            x2,
            weight.contiguous(),
            inv_rms.contiguous(),
            dx,
            dweight_partial,
            n_rows,
            n_cols,
            dy2.stride(0),
            x2.stride(0),
            BLOCK=block,
            num_warps=num_warps(block),
        )
    return dx, dweight_partial.sum(dim=0).to(weight.dtype)


@rms_norm_backward.register_fake
def _(dy, x, weight, inv_rms):
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    x, weight, _eps = inputs
    _y, inv_rms = output
    ctx.save_for_backward(x, weight, inv_rms)
    ctx.mark_non_differentiable(inv_rms)


def _backward(ctx, dy, _d_inv_rms):
    x, weight, inv_rms = ctx.saved_tensors
    dx, dweight = rms_norm_backward(dy, x, weight, inv_rms)
    return dx, dweight, None


rms_norm_forward.register_autograd(_backward, setup_context=_setup_context)


def rms_norm_triton(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm of the last dimension of x (any leading shape) with the fused Triton kernels; same
    result and output dtype as `rms_norm_reference`."""
    require_triton("rms_norm_triton")
    check_tensor("x", x, min_ndim=1)
    check_tensor("weight", weight, ndim=1)
    check_same_device(x=x, weight=weight)
    if weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}: expected ({x.shape[-1]},), "
            f"the last dimension of x {tuple(x.shape)}"
        )
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps is {eps!r}: expected a non-negative number")
    y, _inv_rms = rms_norm_forward(x, weight, float(eps))
    return y
