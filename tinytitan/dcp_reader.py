"""Distributed Checkpoint (DCP) folders, in one place: their content manifest (written after a save,
verified before a load), the checks that a folder is a complete checkpoint that fits what is loaded
into it, DCP's errors turned into one-line UserErrors, and the model's tensors read by one process
without a process group (conversion and generation; any number of ranks may have written them).

Training resumes through `load` too (with its process group, when there is one); the model-only
form written by `save_model` is what `checkpoint.initial_load_path` and `read_model` take.

The manifest (`manifest.json`) lists every file of the folder with its size and zlib's CRC-32.
CRC-32 costs about 0.47 s per GiB on one core of the machine it was measured on (2.1 GiB/s, data in
memory); after a save each rank checksums the files it wrote, while they are still in the page
cache, and at resume the ranks split the files between them. A folder without a manifest (written
before checksums) still loads, with a note that it is unverified.
"""

import json
import re
import warnings
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from tinytitan.errors import QUOTED_ERROR_LIMIT, UserError, one_line
from tinytitan.files import atomic_write_json

MODEL_KEY = "model"  # a checkpoint's entry holding the model: DCP keys "model.<our parameter name>"
MODEL_PREFIX = MODEL_KEY + "."
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "tinytitan checkpoint manifest 1"
_RANK_FILE = re.compile(r"__(\d+)[_.]")  # DCP names a rank's files __<rank>_<n>.distcp (and __<rank>.metadata)
_CHUNK = 16 << 20
# What DCP raises for a folder it cannot read into the given state (a damaged shard the checks
# below did not see); anything else is a bug and keeps its traceback.
LOAD_ERRORS = (dcp.CheckpointException, RuntimeError, KeyError, ValueError, OSError)
# A single process loads without a process group on purpose; DCP warns about it.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


# ---- the content manifest ----


def file_entry(path: Path) -> dict:
    """A file's size and CRC-32 (as 8 hex digits), read in chunks."""
    crc, size = 0, 0
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"bytes": size, "crc32": f"{crc:08x}"}


def files_of_rank(folder: Path, rank: int) -> list[str]:
    """The files of a just-saved folder that `rank` wrote (by DCP's names); rank 0 also takes the rest."""
    names = []
    for path in sorted(folder.iterdir()):
        match = _RANK_FILE.match(path.name)
        owner = int(match.group(1)) if match else 0
        if owner == rank and path.is_file() and path.name != MANIFEST_FILE:
            names.append(path.name)
    return names


def checksums(folder: Path, names: list[str]) -> dict[str, dict]:
    return {name: file_entry(folder / name) for name in names}


def write_manifest(folder: Path, entries: dict[str, dict]) -> None:
    """The folder's manifest, durable before the folder is published."""
    atomic_write_json(folder / MANIFEST_FILE, {"format": MANIFEST_FORMAT, "files": dict(sorted(entries.items()))}, True)


def seal(folder: Path) -> None:
    """Checksum every file of a folder written by this one process, and write its manifest."""
    write_manifest(folder, checksums(folder, files_of_rank(folder, 0)))


def read_manifest(folder: Path, what: str) -> dict[str, dict] | None:
    """File name -> {bytes, crc32} from the folder's manifest; None for a folder written without one."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if record["format"] != MANIFEST_FORMAT or not all({"bytes", "crc32"} <= set(v) for v in files.values()):
            raise ValueError(f"format {record['format']!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        detail = one_line(f"{type(error).__name__}: {error}", QUOTED_ERROR_LIMIT)
        raise UserError(f"{what} {folder}: unreadable {MANIFEST_FILE} ({detail})") from None
    return files


def mismatches(folder: Path, manifest: dict[str, dict], names: list[str]) -> list[str]:
    """What differs from the manifest among the named files, one phrase each (the file named first)."""
    problems = []
    for name in names:
        path, expected = folder / name, manifest[name]
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif (size := path.stat().st_size) != expected["bytes"]:
            problems.append(f"{name} has {size} bytes, its manifest says {expected['bytes']} (truncated or replaced)")
        elif (crc := file_entry(path)["crc32"]) != expected["crc32"]:
            problems.append(f"{name} does not match its checksum (crc32 {crc}, manifest {expected['crc32']}): damaged")
    return problems


def verify(folder: Path, what: str, rank: int = 0, world_size: int = 1) -> list[str] | None:
    """This rank's share of the folder's files checked against its manifest: the problems found,
    or None when the folder has no manifest (a checkpoint written before checksums)."""
    manifest = read_manifest(folder, what)
    return None if manifest is None else mismatches(folder, manifest, sorted(manifest)[rank::world_size])


def sizes_match(folder: Path) -> bool:
    """Whether the folder has a manifest and every file it lists has its size (cheap: no reading)."""
    try:
        manifest = read_manifest(folder, "checkpoint")
    except UserError:
        return False
    return manifest is not None and all(
        (folder / name).is_file() and (folder / name).stat().st_size == entry["bytes"]
        for name, entry in manifest.items()
    )


def refuse(folder: Path, what: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{what} {folder}: {problems[0]}{more}; {_ADVICE}")


def unverified_note(folder: Path) -> str:
    return f"note: {folder} has no {MANIFEST_FILE} (written before checkpoints had checksums): loaded unverified"


_ADVICE = "the checkpoint cannot be loaded as it is; move it away to use an older one"


# ---- a checkpoint's structure, against what is loaded into it ----


def require_checkpoint(path: Path, what: str) -> None:
    """Refuse a folder that DCP did not write (it has no .metadata); `what` names where it came from."""
    if (path / ".metadata").is_file():
        return
    if path.is_dir() and (any(path.glob("*.distcp")) or (path / MANIFEST_FILE).is_file()):
        raise UserError(f"{what} {path}: .metadata is missing; {_ADVICE}")
    raise UserError(
        f"{what} {path}: not a checkpoint (expected a folder written by Distributed Checkpoint, with a .metadata file)"
    )


def read_metadata(path: Path, what: str) -> Metadata:
    require_checkpoint(path, what)
    try:
        return FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # a damaged .metadata fails in many ways (pickle, EOF, ...)
        detail = one_line(f"{type(error).__name__}: {error}", QUOTED_ERROR_LIMIT)
        raise UserError(f"{what} {path}: unreadable .metadata ({detail}); {_ADVICE}") from None


def check_shard_files(path: Path, metadata: Metadata, what: str, prefixes: tuple[str, ...]) -> None:
    """Every shard file the entries under `prefixes` live in is there and holds their bytes: a step
    folder copied without one rank's file fails here, naming it, rather than deep inside DCP."""
    needed: dict[str, int] = {}  # shard file -> bytes those tensors need in it
    for index, storage in (metadata.storage_data or {}).items():
        if index.fqn.startswith(prefixes):
            needed[storage.relative_path] = max(needed.get(storage.relative_path, 0), storage.offset + storage.length)
    missing = sorted(name for name in needed if not (path / name).is_file())
    short = sorted(name for name in needed if name not in missing and (path / name).stat().st_size < needed[name])
    problems = [f"shard file(s) {', '.join(missing)} missing"] if missing else []
    problems += [f"shard file(s) {', '.join(short)} truncated"] if short else []
    if problems:
        raise UserError(f"{what} {path}: incomplete: {'; '.join(problems)} (copy the whole step folder, every rank's)")


def check_model_shapes(path: Path, metadata: Metadata, what: str, model: dict) -> None:
    """The checkpoint's model tensors are the model's, by name and shape (before DCP fails less clearly)."""
    stored = {
        key.removeprefix(MODEL_PREFIX): tuple(value.size)
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(value, TensorStorageMetadata)
    }
    wanted = {name: tuple(tensor.shape) for name, tensor in model.items() if isinstance(tensor, torch.Tensor)}
    missing = [name for name in wanted if name not in stored]
    wrong = [
        f"{n} is {stored[n]} in the checkpoint, {shape} in the model"
        for n, shape in wanted.items()
        if n in stored and stored[n] != shape
    ]
    problems = [f"shape of {'; '.join(wrong[:3])}"] if wrong else []
    problems += (
        [f"missing tensor(s) {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")]
        if missing
        else []
    )
    if problems:
        raise UserError(f"{what} {path}: does not fit this model: {'; '.join(problems)}")


def _model_entry(state: dict) -> dict:
    model = state.get(MODEL_KEY, {})
    return model.state_dict() if hasattr(model, "state_dict") else model


def load(state: dict, path: Path, what: str, failure: str) -> None:
    """Fill `state` in place from the checkpoint at `path` (with the process group, if there is one),
    after checking its structure (the manifest is the caller's: `verify`); an unreadable checkpoint
    is a UserError naming the file or tensor, else `{what} {path}: {failure} (DCP's reason)`."""
    metadata = read_metadata(path, what)
    for key in state:  # a model-only checkpoint asked for a training state (initial_load_optimizer, say)
        if not any(name.startswith(f"{key}.") for name in metadata.state_dict_metadata):
            raise UserError(f"{what} {path}: holds no {key} state (a model-only checkpoint?): expected a training one")
    check_shard_files(path, metadata, what, tuple(f"{key}." for key in state))
    check_model_shapes(path, metadata, what, _model_entry(state))
    try:
        dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
    except LOAD_ERRORS as error:
        raise UserError(f"{what} {path}: {failure} ({one_line(error, QUOTED_ERROR_LIMIT)})") from None


# ---- one process reading a checkpoint's model ----


def model_metadata(checkpoint: Path) -> dict[str, TensorStorageMetadata]:
    """Our parameter name -> its stored shape and dtype, after checking the folder against its
    manifest (or printing that it has none) and that every shard file of the model is there."""
    require_checkpoint(checkpoint, "checkpoint")
    problems = verify(checkpoint, "checkpoint")
    if problems is None:
        print(unverified_note(checkpoint), flush=True)
    refuse(checkpoint, "checkpoint", problems or [])
    metadata = read_metadata(checkpoint, "checkpoint")
    tensors = {
        key.removeprefix(MODEL_PREFIX): value
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and isinstance(value, TensorStorageMetadata)
    }
    if not tensors:
        raise UserError(f"checkpoint {checkpoint}: holds no model weights (no '{MODEL_PREFIX}*' tensors)")
    check_shard_files(checkpoint, metadata, "checkpoint", (MODEL_PREFIX,))
    return tensors


def read_model(checkpoint: Path, metadata: dict[str, TensorStorageMetadata], names: list[str]) -> dict:
    """The named model tensors in full, in their stored dtype (DCP gathers the ranks' shards); the
    folder was checked by `model_metadata`."""
    tensors = {name: torch.empty(metadata[name].size, dtype=metadata[name].properties.dtype) for name in names}
    _load_checked({MODEL_KEY: tensors}, checkpoint)
    return tensors


def load_model_into(checkpoint: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Fill `tensors` (our names) in place from the checkpoint's model, converting dtypes; the folder
    was checked by `model_metadata`."""
    _load_checked({MODEL_KEY: tensors}, checkpoint)


def _load_checked(state: dict, checkpoint: Path) -> None:
    try:
        dcp.load(state, checkpoint_id=str(checkpoint), no_dist=True)
    except LOAD_ERRORS as error:
        raise UserError(
            f"checkpoint {checkpoint}: cannot read its model tensors ({one_line(error, QUOTED_ERROR_LIMIT)})"
        ) from None


def save_model(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """A model-only checkpoint (our names), as `checkpoint.initial_load_path` and `read_model` take;
    `seal` it once every file it holds is written."""
    dcp.save({MODEL_KEY: tensors}, checkpoint_id=str(folder), no_dist=True)
