"""Language-model loss: mean cross-entropy over the tokens whose label is not ignored."""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy_reference(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Float32 mean loss over non-ignored labels; 0 (not NaN) when every label is ignored."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().clamp(min=1)
    return total / count
