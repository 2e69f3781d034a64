"""The Llama 2 decoder: the layers and TinyLlama's initialisation (arguments and flavors: args.py).

Build it on the meta device, then `to_empty(device=...)` and `init_weights()`: no memory or time is
spent on a first random initialisation that would be thrown away, so a 1.1B model starts in
seconds. Parameter names follow TorchTitan; `hf/mapping.py` maps them to `transformers`' names.
The layers' arithmetic (RMSNorm, rotary, SwiGLU, the loss) comes from one `Kernels` set: the
plain-PyTorch references or the fused Triton kernels, chosen when the model is built.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tinytitan.errors import UserError
from tinytitan.kernels import cross_entropy, rmsnorm, rotary, swiglu, triton_unusable_reason
from tinytitan.models.args import FLAVORS, ModelArgs  # noqa: F401  (re-exported: the model's arguments live there)
from tinytitan.models.attention import (
    ATTENTION,
    CAUSAL,
    AttentionOptions,
    DocumentLayout,
    document_layout,
    rotate,
)


@dataclass(frozen=True)
class Kernels:
    rms_norm: Callable  # (x, weight, eps)
    rotary: Callable  # (x [batch, seq, heads, head_dim], cos, sin)
    swiglu: Callable  # (gate, up)
    linear_cross_entropy: Callable  # (hidden [tokens, dim], weight [vocab, dim], labels [tokens]): mean loss


KERNELS = {
    "torch": Kernels(
        rmsnorm.rms_norm_reference,
        rotary.rotary_reference,
        swiglu.swiglu_reference,
        cross_entropy.linear_cross_entropy_reference,
    ),
    "triton": Kernels(
        rmsnorm.rms_norm_triton, rotary.rotary_triton, swiglu.swiglu_triton, cross_entropy.linear_cross_entropy_triton
    ),
}


def select_kernels(choice: str, device: torch.device) -> str:
    """The KERNELS entry for model.kernels: "auto" is Triton on CUDA (when installed) and PyTorch
    elsewhere; Triton on a CPU runs only under its interpreter."""
    unusable = triton_unusable_reason(device.type)
    if choice == "auto":
        return "triton" if device.type == "cuda" and unusable is None else "torch"
    if choice == "triton" and unusable:
        raise UserError(
            f'model.kernels = "triton": {unusable}: expected a CUDA device with Triton '
            "(or TRITON_INTERPRET=1, the slow interpreter used by the tests)"
        )
    return choice


class LayerKVCache:
    """One layer's keys and values of the positions seen so far, for generation: each forward
    appends its positions, and attention then looks at all of them (but at no padding: `keep`)."""

    def __init__(self, keep: torch.Tensor, n_kv_heads: int, head_dim: int, dtype):
        batch, max_len = keep.shape
        self.keys = torch.zeros(batch, max_len, n_kv_heads, head_dim, device=keep.device, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.keep = keep  # [batch, max_len], False at padding; shared by every layer
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [batch, seq, n_kv_heads, head_dim]; return the keys and values of all positions so far."""
        end = self.length + k.shape[1]
        if end > self.keys.shape[1]:
            raise ValueError(f"KV cache holds {self.keys.shape[1]} positions: cannot append up to {end}")
        self.keys[:, self.length : end] = k
        self.values[:, self.length : end] = v
        self.length = end
        return self.keys[:, :end], self.values[:, :end]

    def attention_mask(self, seq: int) -> torch.Tensor:
        """[batch, 1, seq, length]: the last `seq` positions (the queries) each see every earlier key
        and themselves, but no padding. A padding query still sees itself, so that its (unused) row
        of attention has a key and stays finite rather than NaN."""
        positions = torch.arange(self.length, device=self.keep.device)
        queries = positions[self.length - seq :, None]
        causal = positions[None, :] <= queries
        return causal & (self.keep[:, None, None, : self.length] | (positions[None, :] == queries))


class KVCache:
    """Every layer's LayerKVCache. Pass it to `Transformer.forward` to feed a sequence in pieces:
    each call continues at position `length`. Batched generation pads prompts on the left and
    marks the padding with `mask_padding`; speculative decoding takes back rejected positions
    with `truncate`."""

    def __init__(self, args: "ModelArgs", batch: int, max_len: int, device, dtype=torch.float32):
        self.keep = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.layers = [LayerKVCache(self.keep, args.n_kv_heads, args.head_dim, dtype) for _ in range(args.n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def mask_padding(self, padding: torch.Tensor) -> None:
        """Hide the positions where `padding` [batch, positions] is True from every later query."""
        self.keep[:, : padding.shape[1]] &= ~padding.to(self.keep.device)

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on: the next forward continues there."""
        if not 0 <= length <= self.length:
            raise ValueError(f"KV cache holds {self.length} positions: cannot truncate to {length}")
        for layer in self.layers:
            layer.length = length


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, kernels: Kernels = KERNELS["torch"]):
        super().__init__()
        self.eps, self.kernels = eps, kernels
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.rms_norm(x, self.weight, self.eps)

    def init_weights(self):
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    """Grouped-query attention: n_kv_heads key/value heads shared by n_heads query heads, through
    the backend chosen when the model is built (models/attention.py)."""

    def __init__(self, args: ModelArgs, kernels: Kernels, backend: str = "sdpa"):
        super().__init__()
        self.kernels, self.attend = kernels, ATTENTION[backend]
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKVCache | None = None, mask=None
    ) -> torch.Tensor:
        """`mask` is the backend's form of the documents (DocumentLayout.mask); cos/sin are [seq,
        head_dim], or [batch, seq, head_dim] at per-document positions."""
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q, k = rotate(self.kernels.rotary, q, cos, sin), rotate(self.kernels.rotary, k, cos, sin)
        if cache is None:
            return self.wo(self.attend(q, k, v, mask).reshape(batch, seq, -1))
        # Generation: whatever the backend, SDPA over the cache, which holds one sequence per row
        # read causally, less its left padding.
        k, v = cache.append(k, v)
        mask = cache.attention_mask(seq)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))

    def init_weights(self, init_std: float, out_std: float):
        for linear in (self.wq, self.wk, self.wv):
            nn.init.normal_(linear.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.wo.weight, mean=0.0, std=out_std)


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs, kernels: Kernels):
        super().__init__()
        self.kernels = kernels
        self.w1 = nn.Linear(args.dim, args.ffn_hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(args.dim, args.ffn_hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(args.ffn_hidden_dim, args.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.kernels.swiglu(self.w1(x), self.w3(x)))

    def init_weights(self, init_std: float, out_std: float):
        nn.init.normal_(self.w1.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.w3.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.w2.weight, mean=0.0, std=out_std)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels, attention: str = "sdpa"):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, kernels)
        self.attention = Attention(args, kernels, attention)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, kernels)
        self.feed_forward = FeedForward(args, kernels)
        # Set by parallel.apply_activation_checkpointing: recompute this block's activations in
        # backward. A flag rather than a wrapper module, so parameter names do not change.
        self.checkpoint_activations = False

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKVCache | None = None, mask=None
    ) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, cache, mask, use_reentrant=False)
        return self._forward(x, cos, sin, cache, mask)

    def _forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LayerKVCache | None = None, mask=None
    ) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def init_weights(self, init_std: float, out_std: float):
        self.attention_norm.init_weights()
        self.ffn_norm.init_weights()
        self.attention.init_weights(init_std, out_std)
        self.feed_forward.init_weights(init_std, out_std)


class OutputHead(nn.Module):
    """The output projection, which also computes the loss when given labels. The loss is taken
    inside this module's forward so that, when FSDP shards the weight, it is the gathered weight
    that the fused kernel sees (and the [tokens, vocab] logits need never exist).

    With tied embeddings it owns no weight: the model passes the embedding's (gathered) weight in,
    so the state dict holds that tensor once, as tok_embeddings.weight."""

    def __init__(self, dim: int, vocab_size: int, kernels: Kernels, tied: bool = False):
        super().__init__()
        self.kernels = kernels
        self.weight = None if tied else nn.Parameter(torch.empty(vocab_size, dim))

    def forward(
        self, h: torch.Tensor, labels: torch.Tensor | None = None, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        weight = self.weight if weight is None else weight
        if labels is None:
            return F.linear(h, weight)
        return self.kernels.linear_cross_entropy(h.flatten(0, -2), weight, labels.flatten())


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, kernels: str = "torch", attention: AttentionOptions = CAUSAL):
        super().__init__()
        self.args, self.kernels_name, self.attention_options = args, kernels, attention
        chosen = KERNELS[kernels]
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A dict keyed by layer index keeps parameter names stable when layers are wrapped or split.
        self.layers = nn.ModuleDict(
            {str(i): TransformerBlock(args, chosen, attention.backend) for i in range(args.n_layers)}
        )
        self.norm = RMSNorm(args.dim, args.norm_eps, chosen)
        self.output = OutputHead(args.dim, args.vocab_size, chosen, tied=args.tie_embeddings)
        # Derived from the arguments, so not saved in checkpoints (persistent=False).
        cos, sin = rotary.model_rotary_tables(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab] for `tokens`; or, given `labels`, the mean loss over them.
        With a `cache` (generation), `tokens` continue the positions it holds, and are added to it:
        one sequence, attended causally, at positions that continue (see models/attention.py)."""
        start = cache.length if cache is not None else 0
        end = start + tokens.shape[1]
        if end > self.args.max_seq_len:
            raise ValueError(f"sequence of {end} tokens is longer than max_seq_len={self.args.max_seq_len}")
        layout = document_layout(tokens, self.attention_options) if cache is None else DocumentLayout(None, None)
        if layout.positions is None:
            cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        else:
            cos, sin = self.rope_cos[layout.positions], self.rope_sin[layout.positions]
        h = self.tok_embeddings(tokens)
        for name, layer in self.layers.items():
            h = layer(h, cos, sin, cache.layers[int(name)] if cache is not None else None, layout.mask)
        tied = self.tok_embeddings.weight if self.args.tie_embeddings else None
        return self.output(self.norm(h), labels, tied)

    @torch.no_grad()
    def init_weights(self):
        """TinyLlama's initialisation: N(0, sqrt(2/(5*dim))) everywhere, except the output
        projections of attention and MLP at N(0, 1/sqrt(dim)/n_layers) and the norms at 1. A tied
        embedding/output weight is drawn once, at sqrt(2/(5*dim)) as both would be untied.
        Draws from the default generator, so seed it first for a reproducible start."""
        init_std = math.sqrt(2.0 / (5 * self.args.dim))
        out_std = 1.0 / math.sqrt(self.args.dim) / self.args.n_layers
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=init_std)
        for layer in self.layers.values():
            layer.init_weights(init_std, out_std)
        self.norm.init_weights()
        if self.output.weight is not None:
            nn.init.normal_(self.output.weight, mean=0.0, std=init_std)
        cos, sin = rotary.model_rotary_tables(self.args, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def build_model(
    args: ModelArgs,
    device: torch.device | str,
    kernels: str = "torch",
    attention: AttentionOptions = CAUSAL,
) -> Transformer:
    """Build on meta, materialise on `device` and initialise (seed the default generator first)."""
    with torch.device("meta"):
        model = Transformer(args, kernels, attention)
    model.to_empty(device=device)
    model.init_weights()
    return model


def count_parameters(model: nn.Module, exclude_embedding: bool = False) -> int:
    """Every parameter once (a tied embedding is the output head too). `exclude_embedding` leaves
    out the embedding's lookup table, but not a tied one: that is also the output projection."""
    total = sum(p.numel() for p in model.parameters())
    if exclude_embedding and not model.args.tie_embeddings:
        total -= model.tok_embeddings.weight.numel()
    return total
