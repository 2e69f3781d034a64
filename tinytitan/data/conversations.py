"""Conversations for finetuning: one source's split of masked shards (prepare_data --format chat)
cut into whole conversations and laid out in windows of seq_len + 1 tokens.

A sample is a [2, seq_len + 1] array: the tokens, and the targets, which are the tokens where
training learns them (the answers and their end-of-turn tokens) and IGNORE_INDEX elsewhere; the
loader shifts them into inputs and labels (loader.inputs_and_labels). The rest of a window after its
conversations is padding (eos tokens with ignored targets), never the start of another conversation.

- packing on: conversations are packed whole into windows, first fit in an order drawn from the seed
  (none is split across windows). Each starts with <s>, so
  document masking keeps them from attending to each other, and a conversation's losses do not
  depend on what it is packed with: the packing is drawn once, and each epoch visits the windows in
  an order drawn from (seed, epoch).
- packing off: one conversation per window, padded to seq_len + 1 (fixed shapes: torch.compile
  compiles once, and a micro-batch's cost does not depend on its longest row).

Sample i is a pure function of (data, seed, packing, i), so resuming is exact and O(1). A
conversation longer than seq_len + 1 tokens is cut after its last answer that fits (at a turn
boundary, an end-of-turn token that is trained), or dropped when not even its first answer fits;
both are counted and reported by the caller.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytitan.data.shards import open_mask, open_shard, read_header
from tinytitan.data.streams import EpochOrder
from tinytitan.errors import UserError
from tinytitan.kernels.cross_entropy import IGNORE_INDEX

OPEN_WINDOWS = 64  # windows packing may still add to


class ConversationStream(EpochOrder):
    ORDER_SEED = (0,)  # the epochs' window orders; (seed, 1) draws the packing order

    def __init__(
        self,
        shard_paths: Sequence[Path],
        seq_len: int,
        seed: Sequence[int],
        bos_id: int,
        eos_id: int,
        packing: bool = True,
        shuffle: bool = True,
    ):
        if not shard_paths:
            raise UserError("data: no token shards to read")
        self.shard_paths, self.seq_len, self.seed = list(shard_paths), seq_len, list(seed)
        self.bos_id, self.eos_id, self.packing, self.shuffle = bos_id, eos_id, packing, shuffle
        self.settings: dict = {}
        self.truncated = self.dropped = 0
        self._shard, self._start, self._length = self._conversations()
        if not len(self._length):
            raise UserError(
                f"data: no conversation of {len(shard_paths)} shards ({self.shard_paths[0].parent}) has an "
                f"answer within seq_len + 1 = {seq_len + 1} tokens"
            )
        self._pack_order, self._window_starts = self._pack()
        self.windows_per_epoch = len(self._window_starts) - 1

    # ---- reading the shards ----

    def _maps(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        # Memory maps are opened on first use in each process: loader workers get the paths, not copies.
        if "_open" not in self.__dict__:
            self._open = {}
        if shard not in self._open:
            path = self.shard_paths[shard]
            header, tokens = open_shard(path)
            self._open[shard] = tokens, open_mask(path, header)
        return self._open[shard]

    def __getstate__(self):
        return {key: value for key, value in self.__dict__.items() if key not in ("_open", "_order_cache")}

    def _conversations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shard, start and (cut) length of every conversation that keeps an answer, in stored order."""
        shards, starts, lengths = [], [], []
        for shard, path in enumerate(self.shard_paths):
            if not read_header(path).has_mask:
                raise UserError(
                    f"shard {path}: no trained-token mask: expected conversations prepared with "
                    "scripts/prepare_data.py --format chat"
                )
            tokens, trained = self._maps(shard)
            bounds = np.append(np.flatnonzero(tokens == self.bos_id), len(tokens))
            if len(tokens) and bounds[0] != 0:
                raise UserError(
                    f"shard {path}: starts with token {int(tokens[0])}: expected each conversation to start with <s>"
                )
            for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                length = self._fitting_length(tokens[start:end], trained[start:end])
                if length:
                    shards.append(shard), starts.append(start), lengths.append(length)
        return np.array(shards, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)

    def _fitting_length(self, tokens: np.ndarray, trained: np.ndarray) -> int:
        """The conversation's length, or where it is cut to fit a window (after its last trained
        end-of-turn token within it), or 0 to drop it."""
        window = self.seq_len + 1
        if len(tokens) <= window:
            return len(tokens)
        ends = np.flatnonzero((tokens[:window] == self.eos_id) & (trained[:window] != 0))
        if len(ends):
            self.truncated += 1
            return int(ends[-1]) + 1
        self.dropped += 1
        return 0

    # ---- windows ----

    def _pack(self) -> tuple[np.ndarray, np.ndarray]:
        """The conversations of every window, window after window, and where each window starts
        among them. Packing is first fit over the conversations in an order drawn from the seed,
        among the last OPEN_WINDOWS windows opened (a bound that keeps it linear in time)."""
        count = len(self._length)
        order = np.random.default_rng([*self.seed, 1]).permutation(count) if self.shuffle else np.arange(count)
        if not self.packing:
            return order, np.arange(count + 1)
        windows: list[list[int]] = []
        open_windows, room = [], []  # indices into windows, oldest first, and the tokens each has left
        for conversation, length in zip(order.tolist(), self._length[order].tolist()):
            slot = next((i for i, left in enumerate(room) if left >= length), None)
            if slot is None:
                if len(open_windows) == OPEN_WINDOWS:  # the oldest is final
                    del open_windows[0], room[0]
                windows.append([])
                open_windows.append(len(windows) - 1)
                room.append(self.seq_len + 1)
                slot = len(room) - 1
            windows[open_windows[slot]].append(conversation)
            room[slot] -= length
        starts = np.cumsum([0] + [len(members) for members in windows])
        return np.array([c for members in windows for c in members], dtype=np.int64), starts

    def conversations_in(self, index: int) -> list[int]:
        """The conversations (by stored order) of sample `index`'s window, in their order in it."""
        epoch, position = divmod(index, self.windows_per_epoch)
        window = int(self._order(epoch)[position])
        return self._pack_order[self._window_starts[window] : self._window_starts[window + 1]].tolist()

    def sample(self, index: int) -> np.ndarray:
        """[tokens, targets] of the index-th window, each seq_len + 1 long."""
        sample = np.empty((2, self.seq_len + 1), dtype=np.int64)
        sample[0], sample[1] = self.eos_id, IGNORE_INDEX
        filled = 0
        for conversation in self.conversations_in(index):
            tokens, trained = self._maps(int(self._shard[conversation]))
            start, length = int(self._start[conversation]), int(self._length[conversation])
            piece = np.asarray(tokens[start : start + length], dtype=np.int64)
            sample[0, filled : filled + length] = piece
            sample[1, filled : filled + length] = np.where(trained[start : start + length] != 0, piece, IGNORE_INDEX)
            filled += length
        return sample

    def describe(self) -> str:
        layout = "packed" if self.packing else "one per row"
        return (
            f"{len(self._length)} conversations in {self.windows_per_epoch} windows ({layout}); "
            f"{self.truncated} cut after their last answer within seq_len, {self.dropped} dropped "
            "(no answer within seq_len)"
        )
