"""SwiGLU gating of the Llama MLP: silu(gate) * up.

`swiglu_reference` is plain PyTorch (the oracle); `swiglu_triton` computes the same in float32 in
one elementwise pass, stored in the inputs' dtype. Its backward recomputes the sigmoid from gate
rather than saving it: one more exp per element instead of a whole extra activation in memory.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_same_device, check_tensor, jit, require_triton, tl, triton

_BLOCK = 1024  # elements per program


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@jit
def _sigmoid(x):
    # exp of a non-positive number only: never overflows, for any x.
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@jit
def _swiglu_forward_kernel(gate_ptr, up_ptr, out_ptr, n_elements, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    sigmoid = _sigmoid(gate)
    tl.store(out_ptr + offsets, (gate * sigmoid * up).to(out_ptr.dtype.element_ty), mask=mask)


@jit
def _swiglu_backward_kernel(dy_ptr, gate_ptr, up_ptr, dgate_ptr, dup_ptr, n_elements, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    sigmoid = _sigmoid(gate)
    silu = gate * sigmoid
    # silu'(g) = s + g * s * (1 - s) = s * (1 + g * (1 - s))
    dgate = dy * up * sigmoid * (1.0 + gate * (1.0 - sigmoid))
    tl.store(dgate_ptr + offsets, dgate.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + offsets, (dy * silu).to(dup_ptr.dtype.element_ty), mask=mask)


def _grid(n_elements: int) -> tuple[int]:
    return (triton.cdiv(n_elements, _BLOCK),)


@torch.library.custom_op("tinytitan::swiglu_forward", mutates_args=())
def swiglu_forward(gate: Tensor, up: Tensor) -> Tensor:
    gate, up = gate.contiguous(), up.contiguous()  # elementwise over the flat storage
    out = torch.empty_like(gate)
    if gate.numel():
        _swiglu_forward_kernel[_grid(gate.numel())](gate, up, out, gate.numel(), BLOCK=_BLOCK)
    return out


@swiglu_forward.register_fake
def _(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


@torch.library.custom_op("tinytitan::swiglu_backward", mutates_args=())
def swiglu_backward(dy: Tensor, gate: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
    dy, gate, up = dy.contiguous(), gate.contiguous(), up.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    if gate.numel():
        _swiglu_backward_kernel[_grid(gate.numel())](dy, gate, up, dgate, dup, gate.numel(), BLOCK=_BLOCK)
    return dgate, dup


@swiglu_backward.register_fake
def _(dy, gate, up):
    return (
        torch.empty_like(gate, memory_format=torch.contiguous_format),
        torch.empty_like(up, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)  # gate and up only: the sigmoid is recomputed


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    return swiglu_backward(dy, gate, up)


swiglu_forward.register_autograd(_backward, setup_context=_setup_context)


def swiglu_triton(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up for two tensors of one shape and dtype, computed in float32, stored in their dtype."""
    require_triton("swiglu_triton")
    check_tensor("gate", gate)
    check_tensor("up", up)
    check_same_device(gate=gate, up=up)
    if gate.shape != up.shape:
        raise ValueError(f"up has shape {tuple(up.shape)}: expected the shape of gate {tuple(gate.shape)}")
    if gate.dtype != up.dtype:
        raise ValueError(f"up has dtype {up.dtype}: expected the dtype of gate, {gate.dtype}")
    return swiglu_forward(gate, up)
