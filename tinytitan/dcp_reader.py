"""Reading Distributed Checkpoint (DCP) folders, in one place: the check that a folder is one, DCP's
errors turned into one-line UserErrors, and the model's tensors read by one process without a
process group (for conversion and generation; any number of ranks may have written them).

Training resumes through `load` too (with its process group, when there is one); the model-only
form written by `save_model` is what `checkpoint.initial_load_path` and `read_model` take.
"""

import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from tinytitan.errors import QUOTED_ERROR_LIMIT, UserError, one_line

MODEL_KEY = "model"  # a checkpoint's entry holding the model: DCP keys "model.<our parameter name>"
MODEL_PREFIX = MODEL_KEY + "."
# What DCP raises for a folder it cannot read into the given state (wrong shapes, missing keys or
# shard files, a damaged .metadata or shard); anything else is a bug and keeps its traceback.
LOAD_ERRORS = (dcp.CheckpointException, RuntimeError, KeyError, ValueError, OSError)
# A single process loads without a process group on purpose; DCP warns about it.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def require_checkpoint(path: Path, what: str) -> None:
    """Refuse a folder that DCP did not write (it has no .metadata); `what` names where it came from."""
    if not (path / ".metadata").is_file():
        raise UserError(
            f"{what} {path}: not a checkpoint "
            "(expected a folder written by Distributed Checkpoint, with a .metadata file)"
        )


def load(state: dict, path: Path, what: str, failure: str) -> None:
    """Fill `state` in place from the checkpoint at `path` (with the process group, if there is one);
    an unreadable checkpoint is a UserError saying `{what} {path}: {failure} (DCP's reason)`."""
    require_checkpoint(path, what)
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except LOAD_ERRORS as error:
        raise UserError(f"{what} {path}: {failure} ({one_line(error, QUOTED_ERROR_LIMIT)})") from None


def model_metadata(checkpoint: Path) -> dict[str, TensorStorageMetadata]:
    """Our parameter name -> its stored shape and dtype, after checking that every shard file
    holding the model's tensors is there and long enough."""
    require_checkpoint(checkpoint, "checkpoint")
    try:
        metadata = FileSystemReader(str(checkpoint)).read_metadata()
    except Exception as error:  # a damaged .metadata fails in many ways (pickle, EOF, ...)
        detail = one_line(f"{type(error).__name__}: {error}", QUOTED_ERROR_LIMIT)
        raise UserError(f"checkpoint {checkpoint}: unreadable .metadata ({detail})") from None
    tensors = {
        key.removeprefix(MODEL_PREFIX): value
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(value, TensorStorageMetadata)
    }
    if not tensors:
        raise UserError(f"checkpoint {checkpoint}: holds no model weights (no '{MODEL_PREFIX}*' tensors)")
    _check_shard_files(checkpoint, metadata)
    return tensors


def _check_shard_files(checkpoint: Path, metadata) -> None:
    """Every shard file the model's tensors live in is there and holds their bytes: a step folder
    copied without one rank's file fails here, naming it, rather than deep inside DCP."""
    needed: dict[str, int] = {}  # shard file -> bytes the model's tensors need in it
    for index, storage in (metadata.storage_data or {}).items():
        if index.fqn.startswith(MODEL_PREFIX):
            needed[storage.relative_path] = max(needed.get(storage.relative_path, 0), storage.offset + storage.length)
    missing = sorted(name for name in needed if not (checkpoint / name).is_file())
    short = sorted(name for name in needed if name not in missing and (checkpoint / name).stat().st_size < needed[name])
    problems = [f"shard file(s) {', '.join(missing)} missing"] if missing else []
    problems += [f"shard file(s) {', '.join(short)} truncated"] if short else []
    if problems:
        raise UserError(
            f"checkpoint {checkpoint}: incomplete: {'; '.join(problems)} "
            "(copy the whole step folder, written by every rank)"
        )


def read_model(checkpoint: Path, metadata: dict[str, TensorStorageMetadata], names: list[str]) -> dict:
    """The named model tensors in full, in their stored dtype (DCP gathers the ranks' shards)."""
    tensors = {name: torch.empty(metadata[name].size, dtype=metadata[name].properties.dtype) for name in names}
    load_model_into(checkpoint, tensors)
    return tensors


def load_model_into(checkpoint: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Fill `tensors` (our names) in place from the checkpoint's model, converting dtypes."""
    load({MODEL_KEY: tensors}, checkpoint, "checkpoint", "cannot read its model tensors")


def save_model(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """A model-only checkpoint (our names), as `checkpoint.initial_load_path` and `read_model` take."""
    dcp.save({MODEL_KEY: tensors}, checkpoint_id=str(folder), no_dist=True)
