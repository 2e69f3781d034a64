"""Where a step's time goes: data wait, forward + backward, optimizer, garbage collection, and the
checkpoint saves and validations between log lines.

The loop marks the end of each phase (`mark("data")`, ...). On CUDA a mark records an event on the
stream, and the events are read only when a log line asks (`report()`, after the log line's own
synchronisation): a phase is then the device time between two marks, so the data wait is the time
the GPU sat idle waiting for the host, not the host's time. On CPU the work is synchronous and a
mark reads the wall clock. No mark waits for the device.
"""

import contextlib
import time
from collections import defaultdict

import torch

# Phases that happen every step are reported in milliseconds per step; the rare ones (a save, a
# validation) as their total seconds since the last log line.
PER_STEP = ("data", "forward_backward", "optimizer", "gc")
TOTALS = ("checkpoint", "validation")


class StepTimer:
    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._marks: list[tuple[str, object]] = []  # (phase that just ended, event or time)
        self._steps = 0

    def _now(self):
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start_step(self) -> None:
        self._steps += 1
        self._marks.append(("", self._now()))  # a phase named "" is the time between steps: not reported

    def mark(self, phase: str) -> None:
        """The end of `phase`, which began at the previous mark."""
        self._marks.append((phase, self._now()))

    @contextlib.contextmanager
    def phase(self, phase: str):
        """Time the block as `phase` (what ran since the previous mark is not counted)."""
        self.mark("")
        yield
        self.mark(phase)

    def report(self) -> dict[str, float]:
        """Time per phase since the last report (names as in TensorBoard: time/<phase>_ms per step,
        time/<phase>_s in total), and start counting again."""
        totals: dict[str, float] = defaultdict(float)
        if self._cuda and self._marks:
            self._marks[-1][1].synchronize()
        for (_, before), (phase, after) in zip(self._marks, self._marks[1:]):
            if phase:
                totals[phase] += before.elapsed_time(after) / 1e3 if self._cuda else after - before
        steps = max(self._steps, 1)
        values = {f"time/{phase}_ms": 1e3 * totals[phase] / steps for phase in PER_STEP if phase in totals}
        values.update({f"time/{phase}_s": totals[phase] for phase in TOTALS if totals.get(phase)})
        self._marks, self._steps = self._marks[-1:], 0
        return values
