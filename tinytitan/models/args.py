"""The model's arguments and the named flavors: plain data, without torch, so that the config can
offer the flavors (and check seq_len against them) without importing torch or triton.

Every field is a plain value, so `ModelArgs(**dataclasses.asdict(args)) == args` (checkpoints and
converted folders save them that way). RoPE scaling follows Hugging Face's config.json: "default",
"linear" (positions divided by rope_scaling_factor) or "llama3" (Llama 3.1's frequency-dependent
rule, with the low/high frequency factors and the original context length)."""

from dataclasses import dataclass, fields

from tinytitan.errors import UserError

ROPE_SCALING_TYPES = ("default", "linear", "llama3")


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
    head_dim: int = 0  # 0: dim // n_heads (set in __post_init__, so equal arguments compare equal)
    tie_embeddings: bool = False  # the output head is the embedding's weight
    rope_scaling_type: str = "default"
    rope_scaling_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_seq_len: int = 8192  # llama3 only: the context the unscaled model was trained on

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise UserError(f"model argument {name}={value!r}: expected a positive integer")
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise UserError(
                    f"model arguments dim={self.dim}, n_heads={self.n_heads}: expected dim divisible by n_heads "
                    "(or an explicit head_dim)"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if type(self.head_dim) is not int or self.head_dim < 1 or self.head_dim % 2:
            raise UserError(f"model argument head_dim={self.head_dim!r}: expected a positive even integer (rotary)")
        if self.n_heads % self.n_kv_heads:
            raise UserError(
                f"model arguments n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: "
                "expected n_heads divisible by n_kv_heads"
            )
        for name in ("norm_eps", "rope_theta"):
            if not 0 < getattr(self, name) < float("inf"):
                raise UserError(f"model argument {name}={getattr(self, name)!r}: expected a positive finite number")
        self._check_rope_scaling()

    def _check_rope_scaling(self):
        kind = self.rope_scaling_type
        if kind == "dynamic":
            raise UserError(
                'model argument rope_scaling_type="dynamic": its tables change with the sequence length, which '
                'training cannot match: expected "default", "linear" or "llama3"'
            )
        if kind not in ROPE_SCALING_TYPES:
            raise UserError(
                f"model argument rope_scaling_type={kind!r}: expected one of {', '.join(ROPE_SCALING_TYPES)}"
            )
        if not 0 < self.rope_scaling_factor < float("inf"):
            raise UserError(
                f"model argument rope_scaling_factor={self.rope_scaling_factor!r}: expected a positive number"
            )
        if kind == "llama3":
            low, high = self.rope_low_freq_factor, self.rope_high_freq_factor
            if not 0 < low < high < float("inf"):
                raise UserError(
                    f"model arguments rope_low_freq_factor={low!r}, rope_high_freq_factor={high!r}: "
                    "expected 0 < low < high (llama3 scaling)"
                )
            if type(self.rope_original_max_seq_len) is not int or self.rope_original_max_seq_len < 1:
                raise UserError(
                    f"model argument rope_original_max_seq_len={self.rope_original_max_seq_len!r}: "
                    "expected a positive integer (llama3 scaling)"
                )


MODEL_ARG_NAMES = tuple(f.name for f in fields(ModelArgs))


def _llama2(dim: int, n_layers: int, n_heads: int, ffn_hidden_dim: int, n_kv_heads: int = 0) -> ModelArgs:
    """A Llama 2 shape with the Llama 2 tokenizer's 32000-piece vocabulary and 2048 positions."""
    return ModelArgs(dim, n_layers, n_heads, n_kv_heads or n_heads, 32000, ffn_hidden_dim, max_seq_len=2048)


FLAVORS: dict[str, ModelArgs] = {
    # About 5M parameters: trains on the built-in corpus (4096-piece tokenizer) on 2 CPU cores.
    "debug": ModelArgs(
        dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096, ffn_hidden_dim=688, max_seq_len=1024
    ),
    # The size ladder (Pythia-like widths, Llama 2 tokenizer; exact counts in test_model.py):
    # 20M: 19,548,416 (16.4M of them the embedding and output head).
    "llama_20m": _llama2(dim=256, n_layers=4, n_heads=4, ffn_hidden_dim=688),
    # 60M: 58,073,600.
    "llama_60m": _llama2(dim=512, n_layers=8, n_heads=8, ffn_hidden_dim=1376),
    # 160M: 162,423,552.
    "llama_160m": _llama2(dim=768, n_layers=16, n_heads=12, ffn_hidden_dim=2048),
    # 410M: 411,616,256.
    "llama_410m": _llama2(dim=1024, n_layers=24, n_heads=16, ffn_hidden_dim=3328),
    # TinyLlama-1.1B (Llama 2 architecture and tokenizer): 1,100,048,384 parameters.
    "tinyllama_1b": ModelArgs(
        dim=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        vocab_size=32000,
        ffn_hidden_dim=5632,
        norm_eps=1e-5,
        rope_theta=10000.0,
        max_seq_len=2048,
    ),
    # OpenLLaMA 3B: 3,426,473,600 parameters.
    "openllama_3b": _llama2(dim=3200, n_layers=26, n_heads=32, ffn_hidden_dim=8640),
    # Llama 2 7B: 6,738,415,616 parameters.
    "llama2_7b": _llama2(dim=4096, n_layers=32, n_heads=32, ffn_hidden_dim=11008, n_kv_heads=32),
}
