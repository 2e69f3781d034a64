"""AdamW and the learning-rate schedule (linear warmup, then decay to min_lr).

The schedule is indexed by optimizer step, never by micro-step, so gradient accumulation does
not stretch it. Step s = 1..total is the s-th update: warmup raises the lr linearly to the peak
at s = warmup_steps, then it decays to exactly min_lr at s = total and stays there. The decay is
cosine, linear, none ("constant"), or warmup-stable-decay ("wsd"): the peak until the last
decay_steps steps, then a linear or 1-sqrt fall to min_lr at s = total.

The lr of every update is this formula of the config at that step, and nothing else: a schedule's
state is only the number of updates done, so a run resumed with another training.steps, peak lr
or schedule runs the new config's schedule from the saved step (the optimizer's hyperparameters
are the config's too, see checkpoint.OptimizerState).
"""

import json
import math

import torch
from torch import nn
from torch.distributed.checkpoint.stateful import Stateful

from tinytitan.config import LRScheduler, Optimizer, wsd_decay_steps
from tinytitan.parallel import is_main_process


def build_optimizer(model: nn.Module, config: Optimizer, device: torch.device) -> torch.optim.Optimizer:
    # TinyLlama decays every parameter, norms and embeddings included; one group keeps that. The
    # fused kernel exists on CUDA and CPU (7x faster than the default loop for the debug model on
    # CPU); `device` is where the parameters live.
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=config.eps,
        weight_decay=config.weight_decay,
        fused=device.type in ("cuda", "cpu"),
    )


def lr_at_step(step: int, peak_lr: float, config: LRScheduler, total_steps: int) -> float:
    """Learning rate of the step-th update (1-based)."""
    warmup = config.warmup_steps
    if step <= warmup:
        return peak_lr * step / warmup
    if config.decay_type == "constant" or total_steps <= warmup:
        return peak_lr
    if config.decay_type == "wsd":
        decay_steps = wsd_decay_steps(config, total_steps)
        # integer differences: a cooldown run (warmup 0, decay over all its steps) computes the same
        # floats as the same steps of the uninterrupted run
        progress = min(max(step - (total_steps - decay_steps), 0) / decay_steps, 1.0)
        shape = 1.0 - (math.sqrt(progress) if config.decay_shape == "1-sqrt" else progress)
    else:
        progress = min((step - warmup) / (total_steps - warmup), 1.0)
        shape = 1.0 - progress if config.decay_type == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + (peak_lr - config.min_lr) * shape


class LRSchedule(Stateful):
    """Sets every parameter group's lr to lr_at_step of the next update; step() after each update.
    Its checkpointed state is the number of updates done, under LambdaLR's key (`last_epoch`), so
    checkpoints written with a LambdaLR load; the peak, the length and the shape are the config's."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, config: LRScheduler, total_steps: int):
        self.optimizer, self.peak_lr, self.config, self.total_steps = optimizer, peak_lr, config, total_steps
        self.completed = 0
        self._apply()

    def lr(self) -> float:
        """The lr of the next update."""
        return lr_at_step(self.completed + 1, self.peak_lr, self.config, self.total_steps)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"], group["initial_lr"] = self.lr(), self.peak_lr

    def step(self) -> None:
        self.completed += 1
        self._apply()

    def describe(self) -> dict:
        """The config keys the schedule is made of (saved beside the step, to say what a resume changes)."""
        keys = {"training.steps": self.total_steps, "optimizer.lr": self.peak_lr}
        keys |= {f"lr_scheduler.{key}": value for key, value in vars(self.config).items()}
        return keys

    def state_dict(self) -> dict:
        return {"last_epoch": json.dumps({"completed": self.completed, "schedule": self.describe()})}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["last_epoch"]  # a bare integer: saved by a LambdaLR
        saved = json.loads(saved) if isinstance(saved, str) else {"completed": saved, "schedule": {}}
        self.completed = int(saved["completed"])
        self._apply()
        changed = {key: value for key, value in saved["schedule"].items() if self.describe().get(key) != value}
        for key, before in changed.items() if is_main_process() else ():
            print(
                f"resume: {key} {before} -> {self.describe()[key]}: the lr follows the config's schedule from step "
                f"{self.completed + 1} (lr {self.lr():.4e})",
                flush=True,
            )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config: LRScheduler, total_steps: int) -> LRSchedule:
    """The schedule of `optimizer`, whose configured lr is the peak."""
    return LRSchedule(optimizer, optimizer.defaults["lr"], config, total_steps)
