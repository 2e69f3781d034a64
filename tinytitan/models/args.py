"""The model's arguments and the named flavors: plain data, without torch, so that the config can
offer the flavors (and check seq_len against them) without importing torch or triton."""

from dataclasses import dataclass

from tinytitan.errors import UserError


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
            raise UserError(
                f"model arguments dim={self.dim}, n_heads={self.n_heads}: expected dim to split into heads of even size"
            )
        if self.n_heads % self.n_kv_heads:
            raise UserError(
                f"model arguments n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}: "
                "expected n_heads divisible by n_kv_heads"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


FLAVORS: dict[str, ModelArgs] = {
    # About 5M parameters: trains on the built-in corpus (4096-piece tokenizer) on 2 CPU cores.
    "debug": ModelArgs(
        dim=256, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=4096, ffn_hidden_dim=688, max_seq_len=1024
    ),
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
}
