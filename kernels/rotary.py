"""Rotary position embeddings in the Hugging Face half-split layout.

Dimension i of a head is paired with dimension i + head_dim/2 (not with its neighbour, as in the
original Meta checkpoints), so weights move between us and `transformers` without permutation.

`rotary_reference` is plain PyTorch (the oracle); `rotary_triton` is the fused Triton version: it
reads x through its strides (q and k are views of projection outputs), rotates in float32 and
writes a contiguous result. Its backward is the transposed rotation, which for these tables (both
halves share each frequency) is the same rotation with sin negated.
"""

import math

import torch
from torch import Tensor

from ._common import check_same_device, check_shape, check_tensor, jit, last_dim_contiguous, require_triton, tl, triton


def rotary_tables(
    head_dim: int, max_seq_len: int, theta: float, device=None, scaling=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [max_seq_len, head_dim], float32, each frequency repeated for both halves.
    `scaling` (a ModelArgs, or anything with its rope_scaling_* fields) rescales the frequencies."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    if scaling is not None:
        inv_freq = scaled_inv_freq(inv_freq, scaling)
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def model_rotary_tables(args, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables of a model's arguments (ModelArgs): what the model, and every loader, uses."""
    return rotary_tables(args.head_dim, args.max_seq_len, args.rope_theta, device=device, scaling=args)


def scaled_inv_freq(inv_freq: torch.Tensor, args) -> torch.Tensor:
    """The frequencies under RoPE scaling, as Hugging Face defines each kind.

    linear: every frequency divided by the factor (the same as dividing the positions by it).
    llama3: by wavelength 2*pi/f against the original context length L: waves longer than
    L/low_freq_factor are slowed by the factor, waves shorter than L/high_freq_factor kept, and
    those between interpolated: f * ((1 - s)/factor + s) with s = (L/wavelength - low)/(high - low),
    which runs from 0 at the long end to 1 at the short end."""
    kind, factor = args.rope_scaling_type, args.rope_scaling_factor
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / factor
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r}: expected default, linear or llama3")
    low, high, context = args.rope_low_freq_factor, args.rope_high_freq_factor, args.rope_original_max_seq_len
    wavelength = 2 * math.pi / inv_freq
    smooth = (context / wavelength - low) / (high - low)
    interpolated = inv_freq * ((1 - smooth) / factor + smooth)
    slowed = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
    between = (wavelength >= context / high) & (wavelength <= context / low)
    return torch.where(between, interpolated, slowed)


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by cos/sin [seq, head_dim], in float32."""
    x32 = x.float()
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    cos = cos[:, None, :]  # broadcast over heads
    sin = sin[:, None, :]
    return (x32 * cos + rotated_half * sin).to(x.dtype)


@jit
def _rotary_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    seq_len,
    n_heads,
    half,
    x_stride_batch,
    x_stride_seq,
    x_stride_head,
    cos_stride,
    sin_stride,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    TRANSPOSE: tl.constexpr,
):
    # One program per (token, block of heads): the token's cos/sin row is loaded once for all its heads.
    token = tl.program_id(0).to(tl.int64)
    batch, position = token // seq_len, token % seq_len
    heads = tl.program_id(1) * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    dims = tl.arange(0, BLOCK_HALF)
    dim_mask = dims < half
    mask = (heads < n_heads)[:, None] & dim_mask[None, :]

    cos_row, sin_row = cos_ptr + position * cos_stride, sin_ptr + position * sin_stride
    cos1 = tl.load(cos_row + dims, mask=dim_mask, other=0.0)[None, :]
    cos2 = tl.load(cos_row + half + dims, mask=dim_mask, other=0.0)[None, :]
    sin1 = tl.load(sin_row + dims, mask=dim_mask, other=0.0)[None, :]
    sin2 = tl.load(sin_row + half + dims, mask=dim_mask, other=0.0)[None, :]
    if TRANSPOSE:
        # The transpose of [[c1, -s1], [s2, c2]] is [[c1, s2], [-s1, c2]]: each half takes the other's sin, negated.
        sin_first = -sin2
        sin_second = -sin1
    else:
        sin_first = sin1
        sin_second = sin2

    x_head = x_ptr + batch * x_stride_batch + position * x_stride_seq + heads[:, None] * x_stride_head
    x1 = tl.load(x_head + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_head + half + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    out_head = out_ptr + token * n_heads * 2 * half + heads[:, None] * 2 * half  # out is contiguous
    tl.store(out_head + dims[None, :], (x1 * cos1 - x2 * sin_first).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_head + half + dims[None, :], (x2 * cos2 + x1 * sin_second).to(out_ptr.dtype.element_ty), mask=mask)


@torch.library.custom_op("tinytitan::rotary", mutates_args=())
def rotary(x: Tensor, cos: Tensor, sin: Tensor, transpose: bool) -> Tensor:
    """x rotated by (cos, sin), or by the transposed rotation; contiguous, in x's dtype."""
    x, cos, sin = last_dim_contiguous(x), last_dim_contiguous(cos), last_dim_contiguous(sin)
    batch, seq_len, n_heads, head_dim = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel():
        block_heads = min(triton.next_power_of_2(n_heads), 32)
        grid = (batch * seq_len, triton.cdiv(n_heads, block_heads))
        _rotary_kernel[grid](
            x,
            cos,
            sin,
            out,
            seq_len,
            n_heads,
            head_dim // 2,
            x.stride(0),
            x.stride(1),
            x.stride(2),
            cos.stride(0),
            sin.stride(0),
            BLOCK_HEADS=block_heads,
            BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
            TRANSPOSE=transpose,
        )
    return out


@rotary.register_fake
def _(x, cos, sin, transpose):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    _x, cos, sin, transpose = inputs
    ctx.save_for_backward(cos, sin)
    ctx.transpose = transpose


def _backward(ctx, dy):
    cos, sin = ctx.saved_tensors
    # The tables are fixed buffers: no gradient for them.
    return rotary(dy, cos, sin, not ctx.transpose), None, None, None


rotary.register_autograd(_backward, setup_context=_setup_context)


def rotary_triton(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [batch, seq, heads, head_dim] (any strides) by float32 cos/sin [seq, head_dim], as
    `rotary_reference` does; the result is contiguous, in x's dtype."""
    require_triton("rotary_triton")
    check_tensor("x", x, ndim=4)
    check_tensor("cos", cos, dtypes=(torch.float32,), ndim=2)
    check_tensor("sin", sin, dtypes=(torch.float32,), ndim=2)
    check_same_device(x=x, cos=cos, sin=sin)
    _batch, seq_len, _heads, head_dim = x.shape
    if head_dim % 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected an even head_dim (its last dimension)")
    check_shape("cos", cos, (seq_len, head_dim), f"[seq, head_dim] of x {tuple(x.shape)}")
    check_shape("sin", sin, (seq_len, head_dim), f"[seq, head_dim] of x {tuple(x.shape)}")
    return rotary(x, cos, sin, False)
