"""The per-rank loader of a global sample stream, on torchdata's StatefulDataLoader.

Every rank reads the same global stream (see streams.py). A global micro-batch is the next
micro_batch_size x world_size samples; rank r takes the r-th slice of it. The loader's state is
the global position of the first sample not yet handed to the training loop: one integer, the
same on every rank, that does not depend on the number of ranks (with a fixed global batch in
tokens, it is steps x samples per step). Restoring it restarts the workers at that position, so
resuming is exact with any num_workers, costs nothing, and works on a different number of ranks.
"""

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from tinytitan.data.streams import Stream


class _StreamDataset(Dataset):
    """Map-style view of a stream: item i is global sample i as an int64 tensor."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.stream.sample(index), dtype=np.int64))


class _RankSampler(Sampler):
    """This rank's global sample indices, forever, from a global position."""

    def __init__(self, start: int, micro_batch_size: int, rank: int, world_size: int):
        self.start, self.micro_batch_size, self.rank, self.world_size = start, micro_batch_size, rank, world_size

    def __iter__(self):
        position = self.start
        while True:
            first = position + self.rank * self.micro_batch_size
            yield from range(first, first + self.micro_batch_size)
            position += self.micro_batch_size * self.world_size


class DataLoader:
    """Micro-batches of (inputs, labels), each [micro_batch_size, seq_len] int64, for one rank."""

    def __init__(
        self,
        stream: Stream,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.stream, self.micro_batch_size = stream, micro_batch_size
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.device = torch.device(device)
        self.position = 0
        self._batches = None

    def _start(self):
        with warnings.catch_warnings():  # torchdata 0.11 calls an API that torch >= 2.12 deprecates
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            loader = StatefulDataLoader(
                _StreamDataset(self.stream),
                batch_size=self.micro_batch_size,
                sampler=_RankSampler(self.position, self.micro_batch_size, self.rank, self.world_size),
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=4 if self.num_workers else None,
            )
            return iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            self._batches = self._start()
        batch = next(self._batches)
        self.position += self.micro_batch_size * self.world_size
        batch = batch.to(self.device, non_blocking=True)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])
        self.close()

    def close(self) -> None:
        """Stop the workers; the next batch starts them again at the current position."""
        self._batches = None
