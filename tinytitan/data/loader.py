"""The per-rank loader of a global sample stream, on torchdata's StatefulDataLoader.

Every rank reads the same global stream (see streams.py). A global micro-batch is the next
micro_batch_size x world_size samples; rank r takes the r-th slice of it. The loader's state is
the global position of the first sample not yet handed to the training loop: one integer, the
same on every rank, that does not depend on the number of ranks (with a fixed global batch in
tokens, it is steps x samples per step). Restoring it restarts the workers at that position, so
resuming is exact with any num_workers, costs nothing, and works on a different number of ranks.

A position means something only for the stream it counts samples of: the stream's `settings`
(seq_len, seed, dataset kind; see sources.stream_settings) are saved beside it, and a state saved
under other settings is refused with one line naming the setting, rather than continued in a stream
that would skip or repeat data. A mixture also saves its data plan (plan.py) and each source's
samples so far: a resume with other sources or weights continues the plan in a new segment, and
says so. The global batch and the number of ranks may change: they only decide how many of the
next samples each step takes.

DCP refuses a checkpoint that lacks a key the loader asks for, so the state keeps its one key,
"position", which now holds JSON text {"sample": N, "settings": {...}, "plan": [...], "consumed":
{...}}; without "plan" it was saved before plans (its settings then name the sources and their
shares, which must match), and a bare integer there is a checkpoint saved before settings were
recorded, resumed unchecked.
"""

import json
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

from tinytitan.data.plan import continue_plan, plan_record
from tinytitan.data.streams import MixedStream, Stream
from tinytitan.errors import UserError


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
        return inputs_and_labels(batch.to(self.device, non_blocking=True))

    def state_dict(self) -> dict:
        state = {"sample": self.position, "settings": self._settings()}
        if isinstance(self.stream, MixedStream):
            state |= {"plan": plan_record(self.stream), "consumed": self.stream.consumed(self.position)}
        return {"position": json.dumps(state)}

    def load_state_dict(self, state: dict) -> None:
        self.continue_from(state, new_run=False)

    def continue_from(self, state: dict, new_run: bool) -> None:
        """Continue the saved stream at its position: a resume, or a new run (checkpoint.initial_load_data)
        whose weight schedules count its own steps. A changed data plan becomes a new segment (plan.py)."""
        saved = state["position"]
        if isinstance(saved, str):
            saved = json.loads(saved)
            settings = self._settings()
            if "plan" in saved:  # sources and weights may change: the plan says how
                settings = {key: value for key, value in settings.items() if key != "data.sources"}
            check_same_settings(saved.get("settings", {}), settings)
            if "plan" in saved and isinstance(self.stream, MixedStream):
                self.stream, changes = continue_plan(
                    self.stream, saved["plan"], saved["consumed"], int(saved["sample"]), new_run
                )
                for line in changes if self.rank == 0 else []:
                    print(line, flush=True)
            saved = saved["sample"]
        self.position = int(saved)  # a bare integer: saved before settings were recorded
        self.close()

    def source_counters(self) -> dict[str, float]:
        """Samples and tokens (inputs) each source has given the run so far, for the metrics."""
        if not isinstance(self.stream, MixedStream):
            return {}
        seq_len = self._settings().get("training.seq_len", 0)
        counters = {}
        for name, samples in self.stream.consumed(self.position).items():
            counters |= {f"data/{name}/samples": samples, f"data/{name}/tokens_seen": samples * seq_len}
        return counters

    def _settings(self) -> dict:
        return getattr(self.stream, "settings", {})

    def close(self) -> None:
        """Stop the workers; the next batch starts them again at the current position."""
        self._batches = None


def inputs_and_labels(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of samples as (inputs, labels): a [B, L + 1] batch of tokens shifted by one, or a
    [B, 2, L + 1] batch of conversations (conversations.py: tokens, and targets that ignore what is
    not learnt) as its tokens' first L and its targets' last L."""
    if batch.dim() == 3:
        return batch[:, 0, :-1].contiguous(), batch[:, 1, 1:].contiguous()
    return batch[:, :-1], batch[:, 1:]


def check_same_settings(saved: dict, current: dict) -> None:
    """Refuse to continue a position saved in another stream: the first setting that differs, with
    both values (a setting one side does not record, from an older or newer version, is skipped)."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise UserError(
                f"resume: {key} = {json.dumps(value)}: the checkpoint's data position counts samples of a stream "
                f"with {key} = {json.dumps(saved[key])} (resume with that value, or start a new run)"
            )
