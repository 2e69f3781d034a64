"""Profiling on demand ([profiling]): a torch.profiler trace of the steps start_step ..
start_step + steps - 1, one file per rank, under <run folder>/profiles/step-<start_step>/
(rank<R>.trace.json, for Perfetto or chrome://tracing), and on CUDA with `with_memory` a memory
snapshot of the same steps (rank<R>.memory.pickle, for https://pytorch.org/memory_viz).

Off by default, and then free: `step()` returns a do-nothing context and nothing else runs.
"""

import contextlib
from pathlib import Path

import torch

from tinytitan.config import Profiling

MEMORY_HISTORY_ENTRIES = 100_000


class StepProfiler:
    def __init__(self, config: Profiling, folder: Path, rank: int, device: torch.device):
        self.config, self.folder, self.rank = config, folder, rank
        self._memory = config.with_memory and device.type == "cuda"
        self._last = config.start_step + config.steps - 1
        self._profile: torch.profiler.profile | None = None

    def step(self, step: int):
        """The context of training step `step`: traced (and named `train_step <step>` in the trace)
        when profiling covers it."""
        if not self.config.enable or not self.config.start_step <= step <= self._last:
            return contextlib.nullcontext()
        return self._traced(step)

    @contextlib.contextmanager
    def _traced(self, step: int):
        if step == self.config.start_step:
            self._start()
        with torch.profiler.record_function(f"train_step {step}"):
            yield
        if step == self._last:
            self.stop()

    def _start(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        if self._memory:
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self._profile = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=self._memory)
        self._profile.start()

    def stop(self) -> None:
        """Write what was traced (also when the run ends inside the profiled steps)."""
        if self._profile is None:
            return
        self._profile.stop()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._profile.export_chrome_trace(str(self.folder / f"rank{self.rank}.trace.json"))
        self._profile = None
        if self._memory:
            torch.cuda.memory._dump_snapshot(str(self.folder / f"rank{self.rank}.memory.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        if self.rank == 0:
            print(f"profile written to {self.folder}", flush=True)
