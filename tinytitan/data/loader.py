"""The sample stream and the per-rank loader.

Sample i of a run is a pure function of (shards, seq_len, seed, i): the shards are read as one
concatenated token array, cut into windows of seq_len + 1 tokens (inputs and the next-token
labels), and each epoch visits every window once in an order drawn from (seed, epoch). The tail of
fewer than seq_len + 1 tokens after the last full window is not used. Rank r of W takes a disjoint
slice of every global micro-batch, and the loader's state is just the global position, so resuming
costs nothing and does not depend on the number of ranks.
"""

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tinytitan.data.shards import open_shard
from tinytitan.errors import UserError


class SampleStream:
    def __init__(self, shard_paths: list[Path], seq_len: int, seed: int):
        if not shard_paths:
            raise UserError("data: no token shards to read")
        self.seq_len, self.seed = seq_len, seed
        self._tokens = [open_shard(path)[1] for path in shard_paths]
        sizes = [len(tokens) for tokens in self._tokens]
        self._starts = np.cumsum([0] + sizes)  # global offset of each shard's first token
        self.total_tokens = int(self._starts[-1])
        self.windows_per_epoch = (self.total_tokens - 1) // seq_len
        if self.windows_per_epoch < 1:
            raise UserError(f"data: {self.total_tokens} tokens in {len(shard_paths)} shards: expected more than seq_len={seq_len}")

    @lru_cache(maxsize=2)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.windows_per_epoch)

    def _read(self, start: int, length: int) -> np.ndarray:
        """`length` tokens from global offset `start`, crossing shard boundaries as needed."""
        pieces, shard = [], int(np.searchsorted(self._starts, start, side="right")) - 1
        while length > 0:
            offset = start - int(self._starts[shard])
            piece = self._tokens[shard][offset : offset + length]
            pieces.append(piece)
            start, length, shard = start + len(piece), length - len(piece), shard + 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def sample(self, index: int) -> np.ndarray:
        """The index-th sample of the stream: seq_len + 1 consecutive tokens."""
        epoch, position = divmod(index, self.windows_per_epoch)
        window = int(self._order(epoch)[position])
        return self._read(window * self.seq_len, self.seq_len + 1)


class SyntheticStream:
    """Uniform random tokens, for throughput benchmarks: sample i depends only on (seed, i)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def sample(self, index: int) -> np.ndarray:
        return np.random.default_rng([self.seed, index]).integers(0, self.vocab_size, self.seq_len + 1)


class DataLoader:
    """Micro-batches of (inputs, labels), each [micro_batch_size, seq_len] int64, for one rank."""

    def __init__(self, stream: SampleStream | SyntheticStream, micro_batch_size: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        self.stream, self.micro_batch_size = stream, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.position = 0  # global index of the first sample of the next global micro-batch

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.position + self.rank * self.micro_batch_size
        rows = [self.stream.sample(first + j) for j in range(self.micro_batch_size)]
        self.position += self.micro_batch_size * self.world_size
        batch = torch.from_numpy(np.stack(rows).astype(np.int64))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
