"""Divergence: non-finite steps skipped (training.skip_nonfinite_steps), runs that keep diverging
stopped in one line, and loss spikes told as events (training.loss_spike_stddevs).

With the guard on, every step asks whether its loss or gradient norm is NaN or infinite on any
rank (one all-reduced flag, so every rank takes the same decision, at the cost of one host sync per
step). A skipped step leaves the parameters and the optimizer's state (AdamW's step count too)
untouched; the lr schedule still advances, so the lr stays a function of the step.
"""

import math
import os
import statistics
from collections import deque

import torch
import torch.distributed as dist

from tinytitan.errors import UserError
from tinytitan.run_folder import RunFolder

# Test hook: "RANK:STEP[,STEP...]" puts a NaN into that rank's gradient at those steps (tests only).
NAN_HOOK_VARIABLE = "TINYTITAN_TEST_NAN_GRADIENT_AT"


class TrainingDiverged(UserError):
    """One line naming the step and the checkpoint to go back to (exit status 2)."""


def diverged(step: int, what: str, run: RunFolder) -> TrainingDiverged:
    steps = run.published_steps()
    last = f"the last checkpoint is {run.checkpoint(steps[-1])}" if steps else "there is no checkpoint"
    return TrainingDiverged(f"training diverged at step {step}: {what}; {last}")


def nan_hook_steps(rank: int) -> set[int]:
    """The steps at which the test hook poisons this rank's gradient (none unless it is set)."""
    target, _, steps = os.environ.get(NAN_HOOK_VARIABLE, "").partition(":")
    return {int(step) for step in steps.split(",") if step} if target == str(rank) else set()


def poison_gradient(model: torch.nn.Module) -> None:
    """The test hook's NaN, in this rank's shard of the first gradient."""
    grad = next(p.grad for p in model.parameters() if p.grad is not None)
    local = grad.to_local() if hasattr(grad, "to_local") else grad
    local.view(-1)[0] = math.nan


class DivergenceGuard:
    def __init__(self, max_skips: int, run: RunFolder, rank: int):
        self.max_skips, self.run = max_skips, run
        self.skipped, self.in_a_row = 0, 0
        self.nan_steps = nan_hook_steps(rank)

    @property
    def enabled(self) -> bool:
        return self.max_skips > 0

    def skips(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether to skip this step's update (the same answer on every rank); raises after
        max_skips non-finite steps in a row."""
        if not self.enabled:
            return False
        bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).to(torch.int32)
        if dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if not bad.item():
            self.in_a_row = 0
            return False
        self.skipped, self.in_a_row = self.skipped + 1, self.in_a_row + 1
        if self.in_a_row >= self.max_skips:
            raise diverged(step, f"{self.in_a_row} non-finite steps in a row (training.skip_nonfinite_steps)", self.run)
        return True


class SpikeDetector:
    """A logged loss above the mean of the recent ones by `stddevs` standard deviations."""

    def __init__(self, stddevs: float, window: int = 20):
        self.stddevs, self.recent = stddevs, deque(maxlen=window)

    def check(self, loss: float) -> str | None:
        """A description of the spike, or None."""
        spike = None
        if self.stddevs and len(self.recent) >= 5:
            mean, spread = statistics.fmean(self.recent), statistics.pstdev(self.recent)
            if loss > mean + self.stddevs * spread:
                spike = f"loss spike: {loss:.4f} against a recent mean of {mean:.4f} +- {spread:.4f}"
        self.recent.append(loss)
        return spike
