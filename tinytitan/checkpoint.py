"""Checkpoints with Distributed Checkpoint (DCP): save, publish, resume, export, and preemption.

Everything that changes during training is saved: model, optimizer, lr schedule, loader position,
train state (step, tokens seen) and the RNG state. DCP writes each rank's shards, so a checkpoint
saved by N ranks loads on M ranks (resharding). A checkpoint is written to `step-<N>.tmp` and,
once every rank has finished, renamed to `step-<N>`: a crash or kill during a save leaves the
previous checkpoint as the newest one. Before the rename each rank checksums the files it wrote
and rank 0 writes the folder's manifest (dcp_reader). Resume picks the largest integer N, never by
string order, and verifies it (the ranks share the files): a published checkpoint that is damaged
stops the run with one line naming the file, rather than being skipped for an older one.

What a run deletes: stale `step-<N>.tmp` folders (saves that never finished), and, for
`keep_latest_k`, older checkpoints whose files all still have the sizes their manifest lists. A
folder that fails this (damaged, or written before manifests) is kept and said once, and an
existing `step-<N>` is never replaced by a new save of step N.
Model-only checkpoints (exports, converted weights) hold just the "model" entry, under the same
parameter names, so `checkpoint.initial_load_path` takes either kind. Every checkpoint and export
also holds the model's arguments (model_files.MODEL_ARGS_FILE, covered by the manifest): resume and
initial_load_path refuse one whose arguments differ from the model being trained in any field
(rope_theta, norm_eps, ...), which the tensor shapes alone do not show; only initial_load_path with
initial_load_extends_context may change the RoPE fields and lengthen max_seq_len (context extension).
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
from tinytitan.errors import UserError, filesystem_error
from tinytitan.files import publish_folder
from tinytitan.model_files import (
    CONTEXT_FIELDS,
    check_model_args,
    describe_changes,
    matching_flavor,
    write_model_args_file,
)
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
    """The optimizer state keyed by parameter names, so it reshards like the model. What it loads is
    AdamW's per-parameter state (moments, step counts); the groups' hyperparameters (lr, betas, eps,
    weight_decay) stay the config's, and one that the checkpoint had otherwise is said in one line."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self):
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state_dict):
        configured = [_hyperparameters(group) for group in self.optimizer.param_groups]
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)
        saved = [_hyperparameters(group) for group in self.optimizer.param_groups]
        for group, mine in zip(self.optimizer.param_groups, configured):
            group.update(mine)
        changed = {
            key: (saved[0][key], configured[0][key]) for key in _OPTIMIZER_KEYS if saved[0][key] != configured[0][key]
        }
        for key, (before, now) in changed.items() if is_main_process() else ():
            print(
                f"resume: optimizer {key} {before} -> {now} (the config's) from the next step; the moments continue",
                flush=True,
            )


# The config's AdamW hyperparameters; the lr and initial_lr are the schedule's (optim.LRSchedule).
_OPTIMIZER_KEYS = ("betas", "eps", "weight_decay")


def _hyperparameters(group: dict) -> dict:
    return {key: value for key, value in group.items() if key in (*_OPTIMIZER_KEYS, "lr", "initial_lr")}


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


class _NewRunData(Stateful):
    """The loader's state loaded for a new run: it continues the checkpoint's stream, counting its own steps."""

    def __init__(self, loader):
        self.loader = loader

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state_dict):
        self.loader.continue_from(state_dict, new_run=True)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, run: RunFolder, config: Checkpoint, states: dict[str, Stateful], cpu_group=None):
        self.run, self.config, self.states, self.cpu_group = run, config, states, cpu_group
        self._pending = None  # (step, future) of an async save not yet published
        self._kept: set[Path] = set()  # old checkpoints keep_latest_k may not remove, already said
        # The trained model's arguments, saved in every checkpoint and checked at every load.
        self.model_args = getattr(states["model"].model, "args", None) if "model" in states else None

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
                self._load(self.states, path, "checkpoint")
                if is_main_process():
                    print(f"resumed from {path}", flush=True)
                return steps[-1]
        if self.config.initial_load_path:
            path = Path(self.config.initial_load_path).expanduser()
            self._load(self._initial_states(), path, "checkpoint.initial_load_path")
            if is_main_process():
                print(f"{self._initial_parts()} initialised from {path}", flush=True)
        return 0

    def _initial_parts(self) -> str:
        carried = {
            "optimizer state": self.config.initial_load_optimizer,
            "data position": self.config.initial_load_data,
        }
        return ", ".join(["model", *(part for part, wanted in carried.items() if wanted)])

    def _initial_states(self) -> dict[str, Stateful]:
        """What a new run takes from initial_load_path: the model, and when asked the optimizer state
        (a cooldown from a stable checkpoint) and the data stream (continued as a new run's)."""
        states = {"model": self.states["model"]}
        if self.config.initial_load_optimizer:
            states["optimizer"] = self.states["optimizer"]
        if self.config.initial_load_data:
            states["dataloader"] = _NewRunData(self.states["dataloader"])
        return states

    def _load(self, state: dict, path: Path, what: str) -> None:
        """Verify the folder against its manifest (each rank a share of the files), then load it."""
        dcp_reader.require_checkpoint(path, what)
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        found = self._gather(dcp_reader.verify(path, what, rank, world_size))
        if None in found:
            if is_main_process():
                print(dcp_reader.unverified_note(path), flush=True)
        else:
            dcp_reader.refuse(path, what, [problem for problems in found for problem in problems])
        if self.model_args:  # before the shapes: a differing field is named even when the shapes agree
            self._check_model_args(path, what)
        dcp_reader.load(state, path, what, "does not fit this model and training state")

    def _check_model_args(self, path: Path, what: str) -> None:
        """The checkpoint's model arguments must be this run's; only a run's initial load, with
        initial_load_extends_context, may change the RoPE fields and lengthen max_seq_len (a resume
        never: the run's own checkpoints were saved with its model)."""
        initial = what != "checkpoint"
        extends = initial and self.config.initial_load_extends_context
        advice = _INITIAL_LOAD_ADVICE if initial else _RESUME_ADVICE
        changes = check_model_args(
            path, self.model_args, what, "this run's model", advice, CONTEXT_FIELDS if extends else ()
        )
        if changes and is_main_process():
            print(f"context extension from {path}: {describe_changes(changes)}", flush=True)

    def _gather(self, value) -> list:
        """`value` of every rank, in rank order (on the gloo group: plain Python objects)."""
        if not dist.is_initialized():
            return [value]
        values = [None] * dist.get_world_size()
        dist.all_gather_object(values, value, group=self.cpu_group)
        return values

    def finished(self, resumed_step: int, last_step: int) -> bool:
        """Whether the run resumed at or past its last step (said once): nothing to train, save or export."""
        if resumed_step < last_step:
            return False
        if is_main_process():
            print(
                f"nothing to train: {self.run.checkpoint(resumed_step)} is at or past training.steps = {last_step} "
                "(raise training.steps to train further)",
                flush=True,
            )
        return True

    def due(self, step: int, last_step: int) -> bool:
        return self.config.enable and (step % self.config.interval == 0 or step == last_step)

    def save(self, step: int) -> None:
        self.wait()
        _refuse_to_replace(self.run.checkpoint(step))
        staging = self.run.staging(step)
        if self.config.async_save:
            # Its collectives run on the gloo group: DCP refuses a background save over NCCL alone.
            future = dcp.async_save(
                self.states, checkpoint_id=str(staging), process_group=self.cpu_group, no_dist=not dist.is_initialized()
            )
            self._pending = (step, future)
            return
        try:
            dcp.save(self.states, checkpoint_id=str(staging), no_dist=not dist.is_initialized())
        except BaseException as error:
            self._save_failed(error, staging)
            raise
        self._publish(step)

    def publish_finished(self) -> None:
        """Publish an async save as soon as every rank has written its part (asked every step)."""
        if self._pending and not any_rank(not self._pending[1].done(), self.cpu_group):
            self.wait()

    def wait(self) -> None:
        """Finish and publish an async save still in flight."""
        if self._pending:
            step, future = self._pending
            self._pending = None
            try:
                future.result()
            except BaseException as error:
                self._save_failed(error, self.run.staging(step))
                raise
            self._publish(step)

    @staticmethod
    def _save_failed(error: BaseException, staging: Path) -> None:
        """A save that failed (a full disk, say) leaves no half-written folder behind, and says
        where it failed in one line when the cause is the file system's."""
        user_error = filesystem_error(error, staging)  # while the folder still fills the disk
        shutil.rmtree(staging, ignore_errors=True)
        if user_error:
            raise user_error from None

    def _publish(self, step: int) -> None:
        self._seal(self.run.staging(step))
        if is_main_process():
            publish_folder(self.run.staging(step), self.run.checkpoint(step))
            self._keep_newest()
            print(f"checkpoint saved: {self.run.checkpoint(step)}", flush=True)
        _barrier()

    def _seal(self, staging: Path) -> None:
        """Once every rank has written its files: rank 0 adds model_args.json, each rank checksums
        its own files (rank 0 those DCP did not name after a rank, model_args.json among them), and
        rank 0 writes the manifest."""
        _barrier()
        if is_main_process() and self.model_args:
            write_model_args_file(staging, self.model_args, matching_flavor(self.model_args))
        rank = dist.get_rank() if dist.is_initialized() else 0
        entries = self._gather(dcp_reader.checksums(staging, dcp_reader.files_of_rank(staging, rank)))
        if is_main_process():
            dcp_reader.write_manifest(staging, {name: entry for part in entries for name, entry in part.items()})

    def _keep_newest(self) -> None:
        """Remove the older checkpoints beyond keep_latest_k, only those that are whole (see the top)."""
        if self.config.keep_latest_k:
            for step in self.run.published_steps()[: -self.config.keep_latest_k]:
                path = self.run.checkpoint(step)
                if dcp_reader.sizes_match(path):
                    shutil.rmtree(path)
                elif path not in self._kept:
                    self._kept.add(path)
                    print(
                        f"note: keep_latest_k leaves {path} alone: it has no manifest or does not match it", flush=True
                    )

    def export_model(self, model: torch.nn.Module, step: int, dtype: torch.dtype) -> Path:
        """Save model-only weights in `dtype` to step-<N>-model (same names as the training checkpoint)."""
        weights = {name: tensor.to(dtype) for name, tensor in get_model_state_dict(model).items()}
        final = self.run.export(step)
        _refuse_to_replace(final)
        staging = final.with_name(f"{final.name}.tmp")  # a stale one is among the run's stale_saves()
        dcp.save({"model": weights}, checkpoint_id=str(staging), no_dist=not dist.is_initialized())
        self._seal(staging)
        if is_main_process():
            publish_folder(staging, final)
            print(f"model exported in {dtype}: {final}", flush=True)
        _barrier()
        return final


_INITIAL_LOAD_ADVICE = (
    "set those [model] keys to the checkpoint's, or start from a checkpoint of this model; to continue it at a "
    "longer context, checkpoint.initial_load_extends_context = true lets rope_theta, the rope_scaling keys and "
    "a longer max_seq_len differ"
)
_RESUME_ADVICE = (
    "a run resumes with the model it was started with: set those [model] keys back, or train in another job.name"
)


def _refuse_to_replace(final: Path) -> None:
    """A step folder that exists was not written by this run's save of that step: keep it."""
    if final.exists():
        raise UserError(
            f"checkpoint {final}: already exists and this run would save step {final.name.split('-')[1]} again; "
            "refusing to replace it (move it away, or train in another job.name)"
        )


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
