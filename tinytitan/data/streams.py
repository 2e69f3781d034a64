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


class EpochOrder:
    """The order in which a stream's windows_per_epoch windows are visited in each epoch: drawn from
    (seed, ORDER_SEED, epoch) when shuffling, kept for the last two epochs. The stream keeps
    `_order_cache` out of what it pickles for loader workers."""

    ORDER_SEED: tuple[int, ...] = ()
    seed: list[int]
    shuffle: bool
    windows_per_epoch: int

    def _order(self, epoch: int) -> np.ndarray:
        if "_order_cache" not in self.__dict__:
            self._order_cache = lru_cache(maxsize=2)(self._draw_order)
        return self._order_cache(epoch)

    def _draw_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.windows_per_epoch)
        return np.random.default_rng([*self.seed, *self.ORDER_SEED, epoch]).permutation(self.windows_per_epoch)


class SampleStream(EpochOrder):
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
    sample is found in O(BLOCK) without replaying the stream.

    A weight may be a schedule over optimizer steps (config.schedules): block b takes the weights
    at the step its first sample is trained in, start_step + (b x BLOCK) // samples_per_step, so
    the mixture stays a pure function of (data, seed, plan, i). The counts of every block up to the
    schedules' last point are computed once, vectorised (a few hundred blocks for a ramp over
    billions of tokens); after it the counts are constant and sums are closed-form.

    A mixture may be one segment of a longer plan (data/plan.py): it then starts at global sample
    `start` and source s's first sample is its sample offsets[s], where the earlier segments left it.
    """

    BLOCK = 4096

    def __init__(
        self,
        streams: Sequence[Stream],
        weights: Sequence[float | list],
        seed: Sequence[int],
        names: Sequence[str],
        samples_per_step: int = 1,
        start: int = 0,
        start_step: int = 0,
        offsets: Sequence[int] | None = None,
    ):
        self.streams, self.seed, self.names, self.weights = list(streams), list(seed), list(names), list(weights)
        self.samples_per_step, self.start, self.start_step = samples_per_step, start, start_step
        self.offsets = np.asarray(offsets if offsets is not None else [0] * len(self.streams), dtype=np.int64)
        self.settings: dict = {}
        # what each source holds ("N train tokens, tokenizer X"), and the plan's earlier segments (plan.py)
        self.identities: dict[str, str] = {}
        self.history: list[dict] = []
        self.retired: dict[str, int] = {}  # samples of the sources an earlier segment had and this one has not
        self._ramp_blocks = self._first_constant_block()
        self._tail = self._counts_at(np.array([self._ramp_blocks]))[0]
        self._refuse_vanishing_constant_weights()

    def _block_steps(self, blocks: np.ndarray) -> np.ndarray:
        return self.start_step + blocks * self.BLOCK // self.samples_per_step

    def _first_constant_block(self) -> int:
        """The first block at or after every schedule's last point: from it on, every block's counts are alike."""
        last = max((w[-1][0] for w in self.weights if isinstance(w, list)), default=0)
        return max(0, -(-(last - self.start_step) * self.samples_per_step // self.BLOCK))

    def _counts_at(self, blocks: np.ndarray) -> np.ndarray:
        """[blocks, sources] samples of each source in each block: its share of BLOCK, and the samples
        that flooring left over to the largest remainders."""
        steps = self._block_steps(blocks)
        weights = np.stack([_schedule_values(w, steps) for w in self.weights], axis=1)
        shares = weights / weights.sum(axis=1, keepdims=True) * self.BLOCK
        counts = np.floor(shares).astype(np.int64)
        order = np.argsort(-(shares - counts), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(len(self.weights))[None, :].repeat(len(blocks), 0), axis=1)
        return counts + (rank < (self.BLOCK - counts.sum(axis=1, keepdims=True)))

    def _refuse_vanishing_constant_weights(self) -> None:
        for name, count, weight in zip(self.names, self._tail, self.weights):
            if count == 0 and not isinstance(weight, list):
                raise UserError(
                    f"data source {name!r}: weight {weight} is too small: expected at least 1/{self.BLOCK} of the total"
                )

    def _before(self, block: int) -> np.ndarray:
        """Each source's samples in the blocks before `block` of this mixture."""
        if "_ramp_sums" not in self.__dict__:  # computed once per process, on first use
            ramp = self._counts_at(np.arange(self._ramp_blocks))
            self._ramp_sums = np.concatenate([np.zeros((1, len(self.weights)), np.int64), np.cumsum(ramp, axis=0)])
        ramp = min(block, self._ramp_blocks)
        return self._ramp_sums[ramp] + (block - ramp) * self._tail

    def block_counts(self, block: int) -> np.ndarray:
        """Samples of each source in block `block` of this mixture."""
        return self._tail if block >= self._ramp_blocks else self._counts_at(np.array([block]))[0]

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """For each position of a block: its source, and the index of its sample in that source."""
        if "_block_cache" not in self.__dict__:
            self._block_cache = lru_cache(maxsize=4)(self._draw_block)
        return self._block_cache(block)

    def _draw_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        counts, first = self.block_counts(block), self.offsets + self._before(block)
        sources = np.random.default_rng([*self.seed, block]).permutation(np.repeat(np.arange(len(counts)), counts))
        within = np.empty(self.BLOCK, dtype=np.int64)
        for source, count in enumerate(counts):
            within[sources == source] = first[source] + np.arange(count)
        return sources, within

    def sample(self, index: int) -> np.ndarray:
        if index < self.start:
            raise ValueError(f"sample {index} is before this mixture's first sample {self.start}")
        sources, within = self._block((index - self.start) // self.BLOCK)
        position = (index - self.start) % self.BLOCK
        return self.streams[sources[position]].sample(int(within[position]))

    def consumed(self, position: int) -> dict[str, int]:
        """Each source's samples among the stream's samples before `position` (earlier segments' included)."""
        block, within = divmod(position - self.start, self.BLOCK)
        counts = self.offsets + self._before(block)
        if within:
            counts = counts + np.bincount(self._block(block)[0][:within], minlength=len(self.names))
        return self.retired | {name: int(count) for name, count in zip(self.names, counts)}

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key not in ("_block_cache", "_ramp_sums")}


def _schedule_values(weight: float | list, steps: np.ndarray) -> np.ndarray:
    """A weight (a constant or [[step, value], ...]) at each step: linear between the points, flat outside."""
    if not isinstance(weight, list):
        return np.full(len(steps), float(weight))
    return np.interp(steps, [p[0] for p in weight], [p[1] for p in weight])


class SyntheticStream:
    """Uniform random tokens, for throughput benchmarks: sample i depends only on (seed, i)."""

    def __init__(self, vocab_size: int, seq_len: int, seed: Sequence[int]):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, list(seed)
        self.settings: dict = {}

    def sample(self, index: int) -> np.ndarray:
        return np.random.default_rng([*self.seed, index]).integers(0, self.vocab_size, self.seq_len + 1)
