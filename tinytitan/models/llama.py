"""The Llama 2 decoder: model arguments, named flavors, the layers and TinyLlama's initialisation.

Build it on the meta device, then `to_empty(device=...)` and `init_weights()`: no memory or time is
spent on a first random initialisation that would be thrown away, so a 1.1B model starts in
seconds. Parameter names follow TorchTitan; `hf_adapter.py` maps them to `transformers`' names.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tinytitan.errors import UserError
from tinytitan.kernels.cross_entropy import cross_entropy_reference
from tinytitan.kernels.rmsnorm import rms_norm_reference
from tinytitan.kernels.rotary import rotary_reference, rotary_tables
from tinytitan.kernels.swiglu import swiglu_reference


@dataclass(frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    ffn_hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_hidden_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise UserError(f"model argument {name}={getattr(self, name)}: expected a positive integer")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise UserError(f"model arguments dim={self.dim}, n_heads={self.n_heads}: expected dim to split into heads of even size")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"model arguments n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: expected n_heads divisible by n_kv_heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


FLAVORS: dict[str, ModelArgs] = {
    # About 5M parameters: trains on the built-in corpus (4096-piece tokenizer) on 2 CPU cores.
    "debug": ModelArgs(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096, ffn_hidden_dim=688, max_seq_len=1024),
    # TinyLlama-1.1B (Llama 2 architecture and tokenizer): 1,100,048,384 parameters.
    "tinyllama_1b": ModelArgs(
        dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, vocab_size=32000, ffn_hidden_dim=5632,
        norm_eps=1e-5, rope_theta=10000.0, max_seq_len=2048,
    ),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_reference(x, self.weight, self.eps)

    def init_weights(self):
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    """Grouped-query attention: n_kv_heads key/value heads shared by n_heads query heads."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.wq(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim)
        q, k = rotary_reference(q, cos, sin), rotary_reference(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))

    def init_weights(self, init_std: float, out_std: float):
        for linear in (self.wq, self.wk, self.wv):
            nn.init.normal_(linear.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.wo.weight, mean=0.0, std=out_std)


class FeedForward(nn.Module):
    """SwiGLU MLP: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.ffn_hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(args.dim, args.ffn_hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(args.ffn_hidden_dim, args.dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(swiglu_reference(self.w1(x), self.w3(x)))

    def init_weights(self, init_std: float, out_std: float):
        nn.init.normal_(self.w1.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.w3.weight, mean=0.0, std=init_std)
        nn.init.normal_(self.w2.weight, mean=0.0, std=out_std)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)
        # Set by parallel.apply_activation_checkpointing: recompute this block's activations in
        # backward. A flag rather than a wrapper module, so parameter names do not change.
        self.checkpoint_activations = False

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpoint(self._forward, x, cos, sin, use_reentrant=False)
        return self._forward(x, cos, sin)

    def _forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))

    def init_weights(self, init_std: float, out_std: float):
        self.attention_norm.init_weights()
        self.ffn_norm.init_weights()
        self.attention.init_weights(init_std, out_std)
        self.feed_forward.init_weights(init_std, out_std)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # A dict keyed by layer index keeps parameter names stable when layers are wrapped or split.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        # Derived from the arguments, so not saved in checkpoints (persistent=False).
        cos, sin = rotary_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [batch, seq, vocab] for `tokens`; or, given `labels`, the mean loss over them."""
        seq = tokens.shape[1]
        if seq > self.args.max_seq_len:
            raise ValueError(f"sequence of {seq} tokens is longer than max_seq_len={self.args.max_seq_len}")
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h, cos, sin)
        logits = self.output(self.norm(h))
        if labels is None:
            return logits
        return cross_entropy_reference(logits, labels)

    @torch.no_grad()
    def init_weights(self):
        """TinyLlama's initialisation: N(0, sqrt(2/(5*dim))) everywhere, except the output
        projections of attention and MLP at N(0, 1/sqrt(dim)/n_layers) and the norms at 1.
        Draws from the default generator, so seed it first for a reproducible start."""
        init_std = math.sqrt(2.0 / (5 * self.args.dim))
        out_std = 1.0 / math.sqrt(self.args.dim) / self.args.n_layers
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=init_std)
        for layer in self.layers.values():
            layer.init_weights(init_std, out_std)
        self.norm.init_weights()
        nn.init.normal_(self.output.weight, mean=0.0, std=init_std)
        cos, sin = rotary_tables(self.args.head_dim, self.args.max_seq_len, self.args.rope_theta, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


def build_model(args: ModelArgs, device: torch.device | str) -> Transformer:
    """Build on meta, materialise on `device` and initialise (seed the default generator first)."""
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.init_weights()
    return model


def count_parameters(model: nn.Module, exclude_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if exclude_embedding:
        total -= model.tok_embeddings.weight.numel()
    return total
