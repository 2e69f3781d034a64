"""Checkpoints with Distributed Checkpoint (DCP): save, publish, resume, export, and preemption.

Everything that changes during training is saved: model, optimizer, lr schedule, loader position,
train state (step, tokens seen) and the RNG state. DCP writes each rank's shards, so a checkpoint
saved by N ranks loads on M ranks (resharding). A checkpoint is written to `step-<N>.tmp` and,
once every rank has finished, renamed to `step-<N>`: a crash or kill during a save leaves the
previous checkpoint as the newest one. Resume picks the largest integer N, never by string order.
Model-only checkpoints (exports, converted weights) hold just the "model" entry, under the same
parameter names, so `checkpoint.initial_load_path` takes either kind.
"""

import shutil
import signal
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from tinytitan import dcp_reader
from tinytitan.config import Checkpoint
from tinytitan.files import publish_folder
from tinytitan.parallel import any_rank, is_main_process
from tinytitan.run_folder import RunFolder

# Outside training (exports read back, conversions) DCP runs without a process group on purpose, and warns.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class ModelState(Stateful):
    def __init__(self, model: torch.nn.Module):
        self.model = model

    def state_dict(self):
        return get_model_state_dict(self.model)

    def load_state_dict(self, state_dict):
        set_model_state_dict(self.model, state_dict)


class OptimizerState(Stateful):
    """The optimizer state keyed by parameter names, so it reshards like the model."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self):
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state_dict):
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)


class TrainState(Stateful):
    def __init__(self):
        self.step = 0
        self.tokens_seen = 0

    def state_dict(self):
        return {"step": torch.tensor(self.step), "tokens_seen": torch.tensor(self.tokens_seen)}

    def load_state_dict(self, state_dict):
        self.step, self.tokens_seen = int(state_dict["step"]), int(state_dict["tokens_seen"])


class RNGState(Stateful):
    """The default generators' states (saved once, from rank 0: training itself draws no random
    numbers after initialisation; this is for what a user adds, such as dropout)."""

    def state_dict(self):
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict):
        torch.set_rng_state(state_dict["cpu"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])


def training_states(model, optimizer, scheduler, loader, train_state: TrainState) -> dict[str, Stateful]:
    """Everything that changes during training, under the names a checkpoint holds it by."""
    return {
        "model": ModelState(model),
        "optimizer": OptimizerState(model, optimizer),
        "lr_scheduler": scheduler,
        "dataloader": loader,
        "train_state": train_state,
        "rng": RNGState(),
    }


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _load(state: dict, path: Path, what: str) -> None:
    dcp_reader.load(state, path, what, "does not fit this model and training state")


class Checkpointer:
    def __init__(self, run: RunFolder, config: Checkpoint, states: dict[str, Stateful], cpu_group=None):
        self.run, self.config, self.states, self.cpu_group = run, config, states, cpu_group
        self._pending = None  # (step, future) of an async save not yet published

    def resume(self) -> int:
        """Load the newest complete checkpoint of the run (returns its step), or else the model of
        `initial_load_path` (returns 0)."""
        if self.config.enable:
            if is_main_process():  # a save that was killed leaves a .tmp folder: never resumed from
                for stale in self.run.stale_saves():
                    shutil.rmtree(stale, ignore_errors=True)
            _barrier()
            steps = self.run.published_steps()
            if steps:
                path = self.run.checkpoint(steps[-1])
                _load(self.states, path, "checkpoint")
                if is_main_process():
                    print(f"resumed from {path}", flush=True)
                return steps[-1]
        if self.config.initial_load_path:
            path = Path(self.config.initial_load_path).expanduser()
            _load({"model": self.states["model"]}, path, "checkpoint.initial_load_path")
            if is_main_process():
                print(f"model initialised from {path}", flush=True)
        return 0

    def due(self, step: int, last_step: int) -> bool:
        return self.config.enable and (step % self.config.interval == 0 or step == last_step)

    def save(self, step: int) -> None:
        self.wait()
        staging = self.run.staging(step)
        if self.config.async_save:
            # Its collectives run on the gloo group: DCP refuses a background save over NCCL alone.
            future = dcp.async_save(
                self.states, checkpoint_id=str(staging), process_group=self.cpu_group, no_dist=not dist.is_initialized()
            )
            self._pending = (step, future)
            return
        dcp.save(self.states, checkpoint_id=str(staging), no_dist=not dist.is_initialized())
        self._publish(step)

    def publish_finished(self) -> None:
        """Publish an async save as soon as every rank has written its part (asked every step)."""
        if self._pending and not any_rank(not self._pending[1].done(), self.cpu_group):
            self.wait()

    def wait(self) -> None:
        """Finish and publish an async save still in flight."""
        if self._pending:
            step, future = self._pending
            future.result()
            self._pending = None
            self._publish(step)

    def _publish(self, step: int) -> None:
        _barrier()  # every rank has written its shards
        if is_main_process():
            publish_folder(self.run.staging(step), self.run.checkpoint(step))
            self._keep_newest()
            print(f"checkpoint saved: {self.run.checkpoint(step)}", flush=True)
        _barrier()

    def _keep_newest(self) -> None:
        if self.config.keep_latest_k:
            for step in self.run.published_steps()[: -self.config.keep_latest_k]:
                shutil.rmtree(self.run.checkpoint(step), ignore_errors=True)

    def export_model(self, model: torch.nn.Module, step: int, dtype: torch.dtype) -> Path:
        """Save model-only weights in `dtype` to step-<N>-model (same names as the training checkpoint)."""
        weights = {name: tensor.to(dtype) for name, tensor in get_model_state_dict(model).items()}
        final = self.run.export(step)
        staging = final.with_name(f"{final.name}.tmp")  # a stale one is among the run's stale_saves()
        dcp.save({"model": weights}, checkpoint_id=str(staging), no_dist=not dist.is_initialized())
        _barrier()
        if is_main_process():
            publish_folder(staging, final)
            print(f"model exported in {dtype}: {final}", flush=True)
        _barrier()
        return final


class Preemption:
    """SIGTERM or SIGUSR1 (a cluster's notice) asks the run to finish its step, save and exit 0."""

    def __init__(self, cpu_group=None):
        self.requested, self.cpu_group = False, cpu_group
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, self._note)

    def _note(self, signum, frame) -> None:
        self.requested = True

    def agreed(self) -> bool:
        """Whether any rank was signalled: all ranks stop after the same step."""
        return any_rank(self.requested, self.cpu_group)
