"""Rotary position embeddings in the Hugging Face half-split layout.

Dimension i of a head is paired with dimension i + head_dim/2 (not with its neighbour, as in the
original Meta checkpoints), so weights move between us and `transformers` without permutation.
"""

import torch


def rotary_tables(head_dim: int, max_seq_len: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [max_seq_len, head_dim], float32, each frequency repeated for both halves."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [batch, seq, heads, head_dim] by cos/sin [seq, head_dim], in float32."""
    x32 = x.float()
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    cos = cos[:, None, :]  # broadcast over heads
    sin = sin[:, None, :]
    return (x32 * cos + rotated_half * sin).to(x.dtype)
