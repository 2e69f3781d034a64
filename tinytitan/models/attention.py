"""Attention backends and the document layout of a packed window.

A training window holds documents packed back to back, each starting with the bos token. With
document masking a token attends only to the earlier tokens of its own document; with per-document
positions its rotary position counts from its document's start. The model derives both from its
input tokens, once per forward (`document_layout`), and hands every block the mask in the form its
backend takes:

    sdpa   PyTorch's scaled_dot_product_attention, causal over the whole window (no documents)
    flex   FlexAttention with a BlockMask (causal, or causal within each document)
    flash  the flash-attn package: flash_attn_func (causal) or flash_attn_varlen_func over the
           documents' cumulative lengths; grouped-query attention without repeating K/V

Every backend takes q [batch, seq, heads, head_dim] and k, v [batch, seq, kv_heads, head_dim] and
returns [batch, seq, heads, head_dim]. `attention_reference` (an explicit boolean mask, softmax in
float64) is the oracle the tests hold them to. Generation with the KV cache always takes SDPA
(models/llama.py): the cache holds one sequence, read causally.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as flex_module
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from tinytitan.errors import UserError

BACKENDS = ("sdpa", "flex", "flash")


@dataclass(frozen=True)
class AttentionOptions:
    """How a model attends, fixed when it is built (config: model.attention, data.document_masking,
    data.document_positions; the bos id comes from the data)."""

    backend: str = "sdpa"
    document_masking: bool = False
    per_document_positions: bool = False
    bos_id: int | None = None  # every document starts with this token

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise UserError(f"attention backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.uses_documents and self.bos_id is None:
            raise UserError("document masking or per-document positions: expected the data's bos id")
        if self.document_masking and self.backend == "sdpa":
            raise UserError('document masking: expected attention backend "flex" or "flash" (sdpa is causal only)')

    @property
    def uses_documents(self) -> bool:
        return self.document_masking or self.per_document_positions

    def describe(self) -> str:
        """For the model line at start: "flex attention within documents, per-document positions"."""
        words = f"{self.backend} attention" + (" within documents" if self.document_masking else "")
        return words + (", per-document positions" if self.per_document_positions else "")


CAUSAL = AttentionOptions()  # the default: SDPA over the whole window


@dataclass(frozen=True)
class DocumentLayout:
    """What one forward's blocks need: the backend's mask (None: plain causal; a BlockMask for flex;
    the documents' cumulative lengths over the flattened batch for flash) and the positions
    [batch, seq] (None: 0..seq-1 in every window)."""

    mask: BlockMask | torch.Tensor | None
    positions: torch.Tensor | None


def document_ids(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[batch, seq] the index of each token's document within its window: it grows by one at each
    bos. Tokens before the first bos (a window that starts mid-document) form document 0."""
    return (tokens == bos_id).cumsum(dim=1)


def document_positions(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """[batch, seq] each token's distance from the start of its document (or of the window)."""
    index = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    starts = torch.where(tokens == bos_id, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - starts


def document_layout(tokens: torch.Tensor, options: AttentionOptions) -> DocumentLayout:
    positions = document_positions(tokens, options.bos_id) if options.per_document_positions else None
    if options.backend == "flex":
        mask = document_block_mask(tokens, options.bos_id) if options.document_masking else causal_block_mask(tokens)
    elif options.backend == "flash" and options.document_masking:
        mask = cumulative_lengths(tokens, options.bos_id)
    else:
        mask = None
    return DocumentLayout(mask, positions)


# ---- SDPA ----


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: None = None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=k.shape[2] != q.shape[2]
    )
    return out.transpose(1, 2)


# ---- FlexAttention ----


def _block_mask(mask_mod, batch: int | None, seq: int, device: torch.device) -> BlockMask:
    # On CUDA the mask is built by compiled code (no [batch, seq, seq] tensor is materialised);
    # elsewhere eagerly, which also keeps the CPU tests free of a compile.
    build = _compiled(create_block_mask) if device.type == "cuda" else create_block_mask
    return build(mask_mod, batch, None, seq, seq, device=device)


@functools.cache
def _compiled(function):
    """torch.compile(function), made on first use: importing the compiler costs seconds, which
    nothing that does not use flex on CUDA should pay."""
    return torch.compile(function)


def causal_block_mask(tokens: torch.Tensor) -> BlockMask:
    return _causal_block_mask(tokens.shape[1], tokens.device)


@functools.lru_cache(maxsize=8)
def _causal_block_mask(seq: int, device: torch.device) -> BlockMask:
    return _block_mask(lambda b, h, q, kv: q >= kv, None, seq, device)


def document_block_mask(tokens: torch.Tensor, bos_id: int) -> BlockMask:
    """Causal within each window's documents: built once per forward, shared by every block."""
    documents = document_ids(tokens, bos_id)

    def same_document_causal(b, h, q, kv):
        return (q >= kv) & (documents[b, q] == documents[b, kv])

    return _block_mask(same_document_causal, tokens.shape[0], tokens.shape[1], tokens.device)


def _validate_device_allowing_cpu_backward(query, key, value) -> None:
    """torch's check, less its refusal of a backward on CPU: inductor has no CPU kernel for flex's
    backward, but the unfused implementation (eager, or aot_eager under compile: what runs on CPU
    here, see `compile_backend`) computes it exactly, as the tests check against the reference."""
    if query.device.type != "cpu":
        _torch_validate_device(query, key, value)


# Private torch internals, relaxed once on import (before any flex call is traced) and only where
# this torch has them: a torch without the check has nothing to relax, and CUDA is never affected.
_torch_validate_device = getattr(flex_module, "_validate_device", None)
if _torch_validate_device is not None:
    flex_module._validate_device = _validate_device_allowing_cpu_backward
# Unfused is what flex is meant to be off CUDA here: torch's advice to compile it would mislead.
if isinstance(getattr(flex_module, "_WARNINGS_SHOWN", None), set):
    flex_module._WARNINGS_SHOWN.add("flex_attention_performance")


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    # On CUDA flex must be compiled to be a fused kernel: by the block's compile when there is one,
    # else on its own. Elsewhere it runs unfused.
    alone = q.device.type == "cuda" and not torch.compiler.is_compiling()
    attend = _compiled(flex_module.flex_attention) if alone else flex_module.flex_attention
    out = attend(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=block_mask,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


def compile_backend(options: AttentionOptions, device: torch.device) -> str:
    """The torch.compile backend for the blocks: inductor, except for flex on CPU, whose backward
    inductor cannot generate there (aot_eager traces the same graph and runs flex unfused)."""
    return "aot_eager" if options.backend == "flex" and device.type == "cpu" else "inductor"


# ---- flash-attn ----


def cumulative_lengths(tokens: torch.Tensor, bos_id: int) -> torch.Tensor:
    """int32 offsets of every document in the flattened [batch * seq] tokens, and their total, as
    flash_attn_varlen_func takes them: a window's first token starts a document whether or not it
    is a bos, so no document crosses from one window into the next."""
    starts = tokens == bos_id
    starts[:, 0] = True
    offsets = starts.flatten().nonzero().squeeze(1)
    return torch.cat((offsets, offsets.new_tensor([tokens.numel()]))).to(torch.int32)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """flash-attn (2.7+ registers its functions as torch.library ops, so compiled blocks trace them
    whole). K/V keep their kv_heads: flash-attn shares them among the query heads itself."""
    import flash_attn

    if cu_seqlens is None:
        return flash_attn.flash_attn_func(q, k, v, causal=True)
    batch, seq = q.shape[:2]
    # max_seqlen bounds the documents' lengths: the window's length does, without a device sync.
    out = flash_attn.flash_attn_varlen_func(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens, cu_seqlens, seq, seq, causal=True
    )
    return out.view(batch, seq, *out.shape[1:])


ATTENTION = {"sdpa": sdpa_attention, "flex": flex_attention, "flash": flash_attention}


# ---- rotary at per-token positions, and the reference ----


def rotate(rotary, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [batch, seq, heads, head_dim] rotated by tables of [seq, head_dim], or of [batch, seq,
    head_dim] (per-document positions). The rotary kernels take one table row per sequence position,
    so per-token tables fold batch and seq into one sequence (a view: no copy)."""
    if cos.ndim == 2:
        return rotary(x, cos, sin)
    return rotary(x.flatten(0, 1)[None], cos.flatten(0, 1), sin.flatten(0, 1)).view(x.shape)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Naive attention: `allowed` [batch, seq, seq] says which key each query may see; K/V repeated
    for their query heads, softmax in float64. Returns [batch, seq, heads, head_dim] in q's dtype."""
    groups = q.shape[2] // k.shape[2]
    q64, k64, v64 = (t.double().transpose(1, 2) for t in (q, k, v))
    k64, v64 = k64.repeat_interleave(groups, dim=1), v64.repeat_interleave(groups, dim=1)
    scores = (q64 @ k64.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(dim=-1) @ v64).transpose(1, 2).to(q.dtype)
