"""Sample streams: sample i of a stream is a pure function of its data, seed and i.

A `SampleStream` reads one source's shards as a single concatenated token array cut into windows of
seq_len + 1 tokens (inputs and next-token labels). Each epoch visits every window once, in an
order drawn from (seed, epoch): when a source runs out it starts a new epoch in a new order. The
tail of fewer than seq_len + 1 tokens after the last full window is not used in that epoch.
A `MixedStream` interleaves several sources by weight; a `SyntheticStream` makes random tokens.
"""

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from tinytitan.data.shards import open_shard
from tinytitan.errors import UserError


class Stream(Protocol):
    # What gives sample i its meaning, keyed by the config keys that set it (sources.stream_settings
    # fills it in): the loader saves it with its position and refuses a position saved under others.
    settings: dict

    def sample(self, index: int) -> np.ndarray: ...


class SampleStream:
    def __init__(self, shard_paths: Sequence[Path], seq_len: int, seed: Sequence[int], shuffle: bool = True):
        if not shard_paths:
            raise UserError("data: no token shards to read")
        self.shard_paths, self.seq_len, self.seed, self.shuffle = list(shard_paths), seq_len, list(seed), shuffle
        self.settings: dict = {}
        sizes = [len(tokens) for tokens in self._tokens]
        self._starts = np.cumsum([0] + sizes)  # global offset of each shard's first token
        self.total_tokens = int(self._starts[-1])
        self.windows_per_epoch = (self.total_tokens - 1) // seq_len
        if self.windows_per_epoch < 1:
            raise UserError(
                f"data: {self.total_tokens} tokens in {len(shard_paths)} shards "
                f"({self.shard_paths[0].parent}): expected more than seq_len={seq_len}"
            )

    @property
    def _tokens(self) -> list[np.ndarray]:
        # Memory maps are opened on first use in each process: loader workers get the paths, not copies.
        if "_maps" not in self.__dict__:
            self._maps = [open_shard(path)[1] for path in self.shard_paths]
        return self._maps

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key not in ("_maps", "_order_cache")}

    def _order(self, epoch: int) -> np.ndarray:
        if "_order_cache" not in self.__dict__:
            self._order_cache = lru_cache(maxsize=2)(self._draw_order)
        return self._order_cache(epoch)

    def _draw_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.windows_per_epoch)
        return np.random.default_rng([*self.seed, epoch]).permutation(self.windows_per_epoch)

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
        """The index-th sample: seq_len + 1 consecutive tokens."""
        epoch, position = divmod(index, self.windows_per_epoch)
        window = int(self._order(epoch)[position])
        return self._read(window * self.seq_len, self.seq_len + 1)


class MixedStream:
    """Interleaves sources so that every block of BLOCK consecutive samples holds each source's
    share of the weights (to within one sample), in an order drawn from (seed, block). Sample i
    of the mixture is the k-th sample of one source, k counted over all earlier blocks, so any
    sample is found in O(BLOCK) without replaying the stream."""

    BLOCK = 4096

    def __init__(self, streams: Sequence[Stream], weights: Sequence[float], seed: Sequence[int], names: Sequence[str]):
        self.streams, self.seed = list(streams), list(seed)
        self.settings: dict = {}
        self.counts = self._counts_per_block(weights, names)

    def _counts_per_block(self, weights, names) -> np.ndarray:
        shares = np.asarray(weights, dtype=np.float64) / sum(weights) * self.BLOCK
        counts = np.floor(shares).astype(np.int64)
        # Largest remainders get the samples that flooring left over.
        for index in np.argsort(-(shares - counts), kind="stable")[: self.BLOCK - counts.sum()]:
            counts[index] += 1
        for name, count, weight in zip(names, counts, weights):
            if count == 0:
                raise UserError(
                    f"data source {name!r}: weight {weight} is too small: expected at least 1/{self.BLOCK} of the total"
                )
        return counts

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """For each position of a block: its source, and the index of its sample in that source."""
        if "_block_cache" not in self.__dict__:
            self._block_cache = lru_cache(maxsize=4)(self._draw_block)
        return self._block_cache(block)

    def _draw_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        sources = np.random.default_rng([*self.seed, block]).permutation(
            np.repeat(np.arange(len(self.counts)), self.counts)
        )
        within = np.empty(self.BLOCK, dtype=np.int64)
        for source, count in enumerate(self.counts):
            within[sources == source] = block * count + np.arange(count)
        return sources, within

    def sample(self, index: int) -> np.ndarray:
        sources, within = self._block(index // self.BLOCK)
        position = index % self.BLOCK
        return self.streams[sources[position]].sample(int(within[position]))

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key != "_block_cache"}


class SyntheticStream:
    """Uniform random tokens, for throughput benchmarks: sample i depends only on (seed, i)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: Sequence[int]):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, list(seed)
        self.settings: dict = {}

    def sample(self, index: int) -> np.ndarray:
        return np.random.default_rng([*self.seed, index]).integers(0, self.vocab_size, self.seq_len + 1)
