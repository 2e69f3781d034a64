"""Language-model loss: mean cross-entropy over the tokens whose label is not ignored.

References (plain PyTorch, the oracles): `linear_cross_entropy_reference` on the last hidden states
and the output weight, and `cross_entropy_reference` on logits, which it uses.

`linear_cross_entropy_triton(hidden, weight, labels)` never holds the [tokens, vocab] logits. It
walks the tokens in chunks; per chunk, a torch matmul makes that chunk's logits, one Triton kernel
takes each row's logsumexp (online, in float32) and loss, a second overwrites the logits with their
gradient, and two more matmuls add the chunk's share to d(hidden) and d(weight) (summed over chunks
in float32). Since the loss is a scalar, the gradients are complete at the end of the forward; the
backward only scales them by the incoming gradient.

A label outside [0, vocab) that is not `ignore_index` makes the Triton loss NaN: checking labels
on the host would stall the GPU every step, and a NaN loss cannot go unnoticed.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import INDEX_DTYPES, check_same_device, check_tensor, jit, num_warps, require_triton, tl, triton

IGNORE_INDEX = -100
_MAX_BLOCK_V = 4096  # vocabulary entries per step of a row's loop
_MIN_GPU_CHUNK_ROWS = 4096  # see _chunk_rows


def cross_entropy_reference(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Float32 mean loss over non-ignored labels; 0 (not NaN) when every label is ignored."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().clamp(min=1)
    return total / count


def linear_cross_entropy_reference(
    hidden: Tensor, weight: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Cross-entropy of the logits hidden @ weight.T (made in hidden's dtype, as nn.Linear would),
    averaged over the non-ignored tokens; float32."""
    return cross_entropy_reference((hidden @ weight.t()).float(), labels, ignore_index)


@jit
def _logsumexp_loss_kernel(
    logits_ptr, labels_ptr, lse_ptr, loss_ptr, row_stride, vocab, ignore_index, BLOCK_V: tl.constexpr
):
    """Per row: lse = logsumexp(logits) and loss = lse - logits[label] (0 if ignored)."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    # Online logsumexp: a running maximum and the sum of exp(x - maximum), rescaled when the maximum
    # grows, so the row is read once and exp never overflows.
    running_max = tl.full([], float("-inf"), tl.float32)
    running_sum = tl.zeros([], dtype=tl.float32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)

    label = tl.load(labels_ptr + row).to(tl.int64)
    in_range = (label >= 0) & (label < vocab)
    label_logit = tl.load(row_ptr + label, mask=in_range, other=0.0).to(tl.float32)
    loss = tl.where(in_range, lse - label_logit, float("nan"))
    loss = tl.where(label == ignore_index, 0.0, loss)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, loss)


@jit
def _logits_grad_kernel(
    logits_ptr, labels_ptr, lse_ptr, scale_ptr, row_stride, vocab, ignore_index, BLOCK_V: tl.constexpr
):
    """Overwrite the logits with grad = scale * (softmax - onehot(label)), 0 on ignored rows: each
    element is read before it is overwritten, by the same program."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    label = tl.load(labels_ptr + row).to(tl.int64)
    lse = tl.load(lse_ptr + row)
    scale = tl.where(label == ignore_index, 0.0, tl.load(scale_ptr))  # scale: d(loss) / count
    for start in range(0, vocab, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        mask = cols < vocab
        x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) * scale - tl.where(cols == label, scale, 0.0)
        tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def _block_v(vocab: int) -> int:
    return min(triton.next_power_of_2(vocab), _MAX_BLOCK_V)


def _row_losses(logits: Tensor, labels: Tensor, lse: Tensor, losses: Tensor, ignore_index: int) -> None:
    """Fill lse and losses (float32, one per row of the 2-D `logits`)."""
    n_rows, vocab = logits.shape
    block = _block_v(vocab)
    _logsumexp_loss_kernel[(n_rows,)](
        logits, labels, lse, losses, logits.stride(0), vocab, ignore_index, BLOCK_V=block, num_warps=num_warps(block)
    )


def _logits_grad_in_place(logits: Tensor, labels: Tensor, lse: Tensor, scale: Tensor, ignore_index: int) -> None:
    """Overwrite `logits` with d(loss)/d(logits)."""
    n_rows, vocab = logits.shape
    block = _block_v(vocab)
    _logits_grad_kernel[(n_rows,)](
        logits, labels, lse, scale, logits.stride(0), vocab, ignore_index, BLOCK_V=block, num_warps=num_warps(block)
    )


def _inverse_count(labels: Tensor, ignore_index: int) -> Tensor:
    """1 / (number of non-ignored labels), as a one-element float32 tensor: no host sync. 1 when
    all are ignored, so that the loss and every gradient are 0 rather than NaN."""
    count = (labels != ignore_index).sum().clamp(min=1)
    return (1.0 / count.to(torch.float32)).reshape(1)


def _chunk_rows(n_rows: int, vocab: int, dim: int, device: torch.device) -> int:
    """Tokens per chunk: few enough that one chunk's logits take about as much memory as `hidden`
    itself; but on a GPU at least _MIN_GPU_CHUNK_ROWS, because each chunk also updates the float32
    d(weight), about 12 bytes of traffic per weight, which must stay small next to the chunk's
    matmuls (6 x rows x vocab x dim FLOPs): about 10% of their time at 4096 rows, estimated from an
    H100's peak FLOP/s and bandwidth (not measured)."""
    rows = triton.cdiv(n_rows, triton.cdiv(vocab, dim))
    if device.type == "cuda":
        rows = max(rows, _MIN_GPU_CHUNK_ROWS)
    return max(1, min(rows, n_rows))


@torch.library.custom_op("tinytitan::linear_cross_entropy", mutates_args=())
def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, ignore_index: int, compute_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, d_hidden, d_weight): the float32 mean loss and, with compute_grad, its gradients
    (d_weight summed over chunks in float32); empty tensors in their place otherwise."""
    with torch.autocast(hidden.device.type, enabled=False):  # the chunk matmuls stay in hidden's dtype
        hidden, labels = hidden.contiguous(), labels.contiguous()
        n_rows, dim = hidden.shape
        vocab = weight.shape[0]
        lse = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        losses = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        scale = _inverse_count(labels, ignore_index)
        d_hidden = torch.empty_like(hidden) if compute_grad else hidden.new_empty(0)
        d_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if compute_grad
            else weight.new_empty(0)
        )
        logits = d_weight_chunk = None  # d_weight_chunk: a reused buffer for low-precision chunk products

        chunk = _chunk_rows(n_rows, vocab, dim, hidden.device)
        for start in range(0, n_rows, chunk):
            rows = slice(start, min(start + chunk, n_rows))
            h = hidden[rows]
            logits = torch.mm(h, weight.t())  # [chunk, vocab]: the only logits that ever exist
            _row_losses(logits, labels[rows], lse[rows], losses[rows], ignore_index)
            if not compute_grad:
                continue
            _logits_grad_in_place(logits, labels[rows], lse[rows], scale, ignore_index)
            torch.mm(logits, weight, out=d_hidden[rows])
            if logits.dtype == torch.float32:
                d_weight.addmm_(logits.t(), h)
            else:
                # One chunk's product is rounded once to the low precision; the sum over chunks is float32.
                d_weight_chunk = torch.mm(logits.t(), h, out=d_weight_chunk)
                d_weight += d_weight_chunk
        logits = d_weight_chunk = None  # freed before the cast below allocates
        # Rounded once to weight's dtype here rather than in the backward: less memory held in between.
        return losses.sum() * scale[0], d_hidden, d_weight.to(weight.dtype)


@linear_cross_entropy.register_fake
def _(hidden, weight, labels, ignore_index, compute_grad):
    loss = hidden.new_empty((), dtype=torch.float32)
    if not compute_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, hidden.new_empty(hidden.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output):
    _loss, d_hidden, d_weight = output
    ctx.save_for_backward(d_hidden, d_weight)
    ctx.mark_non_differentiable(d_hidden, d_weight)
    ctx.computed_grad = inputs[4]


def _backward(ctx, d_loss, _d_hidden, _d_weight):
    if not ctx.computed_grad:
        raise RuntimeError("linear_cross_entropy ran with compute_grad=False: it has no gradients to give")
    d_hidden, d_weight = ctx.saved_tensors
    return d_hidden * d_loss, d_weight * d_loss, None, None, None  # d_loss: a 0-dim tensor, dtypes stay


linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def linear_cross_entropy_triton(
    hidden: Tensor, weight: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Mean cross-entropy (float32) of the logits hidden [N, dim] @ weight [vocab, dim].T against
    labels [N], without materialising the logits; 0 with zero gradients when every label is
    `ignore_index`. Under autocast, hidden and weight are cast to the autocast dtype first, as
    nn.Linear's inputs would be."""
    require_triton("linear_cross_entropy_triton")
    check_tensor("hidden", hidden, ndim=2)
    check_tensor("weight", weight, ndim=2)
    check_tensor("labels", labels, dtypes=INDEX_DTYPES, ndim=1)
    check_same_device(hidden=hidden, weight=weight, labels=labels)
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight has dtype {weight.dtype}: expected the dtype of hidden, {hidden.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}: expected [vocab, {hidden.shape[1]}], "
            f"the dim of hidden {tuple(hidden.shape)}"
        )
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}: expected ({hidden.shape[0]},), "
            f"one per row of hidden {tuple(hidden.shape)}"
        )
    _check_ignore_index(ignore_index)
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, _d_hidden, _d_weight = linear_cross_entropy(hidden, weight, labels, ignore_index, compute_grad)
    return loss


def _check_ignore_index(ignore_index) -> None:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"ignore_index is {ignore_index!r}: expected an integer")
