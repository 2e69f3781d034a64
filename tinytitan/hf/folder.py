"""Model weights in and out of files, for the conversion and generation scripts.

- DCP checkpoints (any number of ranks, full training state or model-only): the model's tensors are
  read in one process without a process group, a group at a time, never the optimizer's.
- What a checkpoint holds: the model arguments and the tokenizer, from the run folder's
  config.toml, or from `model_args.json` and `tokenizer.model` beside a converted checkpoint, or
  from the command line.
- Hugging Face folders: config.json and safetensors (or pytorch_model*.bin) weights, sharded or not.
- Output folders: written under a temporary name and renamed when complete.

Names and config.json fields come from `hf_adapter`; this module only moves bytes.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

from tinytitan.config import JobConfig, load_config
from tinytitan.data.builtin_corpus import corpus_folder
from tinytitan.errors import UserError
from tinytitan.hf.mapping import from_hf_config, from_hf_name
from tinytitan.kernels.rotary import rotary_tables
from tinytitan.models.llama import FLAVORS, ModelArgs, Transformer

# A single process loads without a process group on purpose; DCP warns about it.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

MODEL_PREFIX = "model."  # DCP keys of the model's tensors: "model.<our parameter name>"
MODEL_ARGS_FILE = "model_args.json"  # written beside converted checkpoints, which have no run folder
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ---- what a checkpoint is: model arguments and tokenizer ----


@dataclass(frozen=True)
class ModelSpec:
    args: ModelArgs
    flavor: str | None  # the named flavor the arguments are, if any
    args_from: str  # where the arguments came from, for messages
    tokenizer_path: Path | None
    tokenizer_from: str


def matching_flavor(args: ModelArgs) -> str | None:
    return next((name for name, flavor in FLAVORS.items() if flavor == args), None)


def flavor_args(name: str, what: str) -> ModelArgs:
    if name not in FLAVORS:
        raise UserError(f"{what} {name!r}: expected one of {', '.join(FLAVORS)}")
    return FLAVORS[name]


def run_config(checkpoint: Path) -> tuple[Path, JobConfig] | None:
    """The run folder's config.toml (read as training reads it) when `checkpoint` is
    <run>/checkpoints/step-<N>[-model]."""
    path = checkpoint.resolve().parent.parent / "config.toml"
    if checkpoint.resolve().parent.name != "checkpoints" or not path.is_file():
        return None
    return path, load_config([f"--job.config_file={path}"])


def run_tokenizer(config: JobConfig) -> Path | None:
    """The tokenizer a run trained with: data.tokenizer_path, or the built-in corpus's own."""
    if config.data.tokenizer_path:
        return Path(config.data.tokenizer_path).expanduser()
    if config.data.dataset == "builtin":
        return corpus_folder(config.data.cache_dir) / "tokenizer.model"
    return None


def read_model_args_file(path: Path) -> tuple[ModelArgs, str | None]:
    try:
        record = json.loads(path.read_text())
        return ModelArgs(**record["model_args"]), record.get("flavor")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path}: expected the model arguments written by convert_hf_to_dcp.py ({error})") from None


def write_model_args_file(folder: Path, args: ModelArgs, flavor: str | None) -> None:
    record = {"flavor": flavor, "model_args": dataclasses.asdict(args)}
    (folder / MODEL_ARGS_FILE).write_text(json.dumps(record, indent=2) + "\n")


def describe_checkpoint(checkpoint: Path, flavor: str | None = None, tokenizer: Path | None = None) -> ModelSpec:
    """Model arguments and tokenizer of a DCP checkpoint: the command line's, else the run folder's
    config.toml, else the files a conversion left beside the checkpoint."""
    run = run_config(checkpoint)
    args_file = checkpoint / MODEL_ARGS_FILE
    if flavor:
        args, args_from = flavor_args(flavor, "--flavor"), f"flavor {flavor!r} from --flavor"
    elif run:
        flavor = run[1].model.flavor
        args, args_from = flavor_args(flavor, f"{run[0]}: model.flavor"), f"flavor {flavor!r} from {run[0]}"
    elif args_file.is_file():
        args, flavor = read_model_args_file(args_file)
        args_from = (f"flavor {flavor!r}" if flavor else "model arguments") + f" from {args_file}"
    else:
        raise UserError(
            f"checkpoint {checkpoint}: no run config.toml above it and no {MODEL_ARGS_FILE} in it; "
            f"pass --flavor (one of {', '.join(FLAVORS)})"
        )

    run_tokenizer_path = run_tokenizer(run[1]) if run else None
    if tokenizer:
        tokenizer_path, tokenizer_from = Path(tokenizer).expanduser(), "--tokenizer"
    elif run_tokenizer_path:
        tokenizer_path, tokenizer_from = run_tokenizer_path, f"the run config {run[0]}"
    elif (checkpoint / "tokenizer.model").is_file():
        tokenizer_path, tokenizer_from = checkpoint / "tokenizer.model", "beside the checkpoint"
    else:
        tokenizer_path, tokenizer_from = None, "nowhere"
    return ModelSpec(args, flavor, args_from, tokenizer_path, tokenizer_from)


def require_tokenizer(spec: ModelSpec, checkpoint: Path):
    """The spec's tokenizer, checked to exist and to fit the model's vocabulary."""
    from tinytitan.data.tokenizer import Tokenizer

    if spec.tokenizer_path is None:
        raise UserError(
            f"checkpoint {checkpoint}: cannot tell which tokenizer it was trained with; pass --tokenizer PATH"
        )
    if not spec.tokenizer_path.is_file():
        raise UserError(
            f"tokenizer {spec.tokenizer_path} (from {spec.tokenizer_from}): no such file; pass --tokenizer PATH"
        )
    tokenizer = Tokenizer(spec.tokenizer_path)
    if tokenizer.vocab_size > spec.args.vocab_size:
        raise UserError(
            f"tokenizer {spec.tokenizer_path}: {tokenizer.vocab_size} pieces do not fit the model's "
            f"vocabulary of {spec.args.vocab_size}"
        )
    return tokenizer


# ---- DCP checkpoints ----


def expected_shapes(args: ModelArgs) -> dict[str, torch.Size]:
    """Our parameter names and shapes for `args`, in the model's order (built on meta: no memory)."""
    with torch.device("meta"):
        model = Transformer(args)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def check_shapes(found: dict[str, torch.Size], args: ModelArgs, what: str, args_from: str) -> None:
    expected = expected_shapes(args)
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    wrong = [
        f"{name} {tuple(found[name])} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    problems = (
        [f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")]
        if missing
        else []
    )
    problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"shape of {', '.join(wrong[:3])}"] if wrong else []
    if problems:
        raise UserError(f"{what}: its tensors do not fit the model of {args_from}: {'; '.join(problems)}")


def dcp_model_metadata(checkpoint: Path) -> dict[str, "dcp.metadata.TensorStorageMetadata"]:
    """Our parameter name -> its stored shape and dtype, after checking that every shard file
    holding the model's tensors is there and long enough."""
    if not (checkpoint / ".metadata").is_file():
        raise UserError(
            f"checkpoint {checkpoint}: not a checkpoint (expected a folder written by Distributed "
            f"Checkpoint, with a .metadata file)"
        )
    try:
        metadata = FileSystemReader(str(checkpoint)).read_metadata()
    except Exception as error:  # a damaged .metadata fails in many ways (pickle, EOF, ...)
        raise UserError(f"checkpoint {checkpoint}: unreadable .metadata ({type(error).__name__}: {error})") from None
    tensors = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in metadata.state_dict_metadata.items()
        if key.startswith(MODEL_PREFIX) and hasattr(value, "chunks")
    }
    if not tensors:
        raise UserError(f"checkpoint {checkpoint}: holds no model weights (no '{MODEL_PREFIX}*' tensors)")
    needed: dict[str, int] = {}  # shard file -> bytes the model's tensors need in it
    for index, storage in (metadata.storage_data or {}).items():
        if index.fqn.startswith(MODEL_PREFIX):
            needed[storage.relative_path] = max(needed.get(storage.relative_path, 0), storage.offset + storage.length)
    missing = sorted(name for name in needed if not (checkpoint / name).is_file())
    short = sorted(name for name in needed if name not in missing and (checkpoint / name).stat().st_size < needed[name])
    if missing or short:
        problems = ([f"shard file(s) {', '.join(missing)} missing"] if missing else []) + (
            [f"shard file(s) {', '.join(short)} truncated"] if short else []
        )
        raise UserError(
            f"checkpoint {checkpoint}: incomplete: {'; '.join(problems)} "
            f"(copy the whole step folder, written by every rank)"
        )
    return tensors


def load_dcp_tensors(checkpoint: Path, metadata: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """The named model tensors in full, as stored (DCP gathers the ranks' shards)."""
    state = {name: torch.empty(metadata[name].size, dtype=metadata[name].properties.dtype) for name in names}
    load_dcp_into(checkpoint, state)
    return state


def load_dcp_into(checkpoint: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Fill `tensors` (our names) in place from the checkpoint's model, converting dtypes."""
    try:
        dcp.load({"model": tensors}, checkpoint_id=str(checkpoint), no_dist=True)
    except (dcp.CheckpointException, RuntimeError, KeyError, ValueError, OSError) as error:
        detail = " ".join(str(error).split())[:300]
        raise UserError(f"checkpoint {checkpoint}: cannot read its model tensors ({detail})") from None


def read_dcp_model(
    checkpoint: Path, flavor: str | None = None, tokenizer: Path | None = None
) -> tuple[ModelSpec, dict]:
    """What the checkpoint is, and its model tensors' metadata, checked against the model arguments."""
    checkpoint = Path(checkpoint).expanduser()
    metadata = dcp_model_metadata(checkpoint)
    spec = describe_checkpoint(checkpoint, flavor, tokenizer)
    check_shapes(
        {name: value.size for name, value in metadata.items()}, spec.args, f"checkpoint {checkpoint}", spec.args_from
    )
    return spec, metadata


def save_dcp_model(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """A model-only checkpoint, as `checkpoint.initial_load_path` takes."""
    dcp.save({"model": tensors}, checkpoint_id=str(folder), no_dist=True)


# ---- Hugging Face folders ----


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def read_hf_config(folder: Path) -> tuple[dict, ModelArgs]:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    try:
        return config, from_hf_config(config)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: safetensors preferred, sharded (by index) or not."""
    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (folder / index_name).is_file():
            try:
                weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise UserError(f"{folder / index_name}: expected a weight_map ({error})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [file.name for file in files if not file.is_file()]
            if missing:
                raise UserError(
                    f"{folder}: incomplete: weight file(s) {', '.join(missing)} listed in {index_name} are missing"
                )
            return files
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise UserError(f"{folder}: no weights (expected model.safetensors, pytorch_model.bin, or their sharded index)")


def iter_hf_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) of every tensor in the files, one file open at a time."""
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(file), framework="pt") as reader:
                    for name in reader.keys():
                        yield name, reader.get_tensor(name)
            except SafetensorError as error:
                raise UserError(f"{file}: not a readable safetensors file ({error})") from None
        else:
            yield from _load_torch_file(file).items()


def _load_torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin, memory-mapped when it has the zip format (older files are read whole)."""
    for mmap in (True, False):
        try:
            return torch.load(file, map_location="cpu", mmap=mmap, weights_only=True)
        except RuntimeError as error:
            if mmap and "mmap" in str(error):
                continue
            raise UserError(f"{file}: not a readable PyTorch weights file ({error})") from None
        except Exception as error:  # torch.load fails in many other ways on a damaged file
            detail = " ".join(str(error).split())[:200]
            raise UserError(f"{file}: not a readable PyTorch weights file ({type(error).__name__}: {detail})") from None


def read_hf_model(folder: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Hugging Face Llama folder's model arguments and its tensors under our names, checked."""
    folder = Path(folder).expanduser()
    _, args = read_hf_config(folder)
    try:
        tensors = {
            from_hf_name(name): tensor
            for name, tensor in iter_hf_tensors(hf_weight_files(folder))
            if not name.endswith("rotary_emb.inv_freq")
        }  # older exports saved the derived rotary table
    except UserError as error:
        raise UserError(f"{folder}: {error}") from None
    check_shapes(
        {name: tensor.shape for name, tensor in tensors.items()}, args, f"{folder}", f"{folder / 'config.json'}"
    )
    return args, tensors


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("writing Hugging Face weights needs the safetensors package: pip install safetensors") from None
    return safetensors.torch


def plan_shards(sizes: dict[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive names grouped into shards of at most `max_bytes` (a larger tensor alone)."""
    shards, current, current_bytes = [], [], 0
    for name, size in sizes.items():
        if current and current_bytes + size > max_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(name)
        current_bytes += size
    return shards + [current] if current else shards


def write_hf_weights(folder: Path, shards: list[list[str]], load_shard) -> list[str]:
    """Write each shard's tensors (Hugging Face names -> tensors, from `load_shard(names)`) as
    safetensors, one shard in memory at a time; with several, also model.safetensors.index.json."""
    save_file = _safetensors().save_file
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{number:05d}-of-{len(shards):05d}.safetensors" for number in range(1, len(shards) + 1)]
    )
    weight_map, total_bytes = {}, 0
    for file, names in zip(files, shards):
        tensors = load_shard(names)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        total_bytes += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        del tensors
    if len(files) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files


def write_hf_config(folder: Path, args: ModelArgs, dtype: torch.dtype, bos_id: int, eos_id: int) -> None:
    """config.json (every field LlamaForCausalLM needs, from hf_adapter) and generation_config.json."""
    from tinytitan.hf.mapping import to_hf_config

    # transformers 5 reads "dtype", earlier versions "torch_dtype".
    config = {
        **to_hf_config(args, bos_id, eos_id),
        "dtype": DTYPE_NAMES[dtype],
        "torch_dtype": DTYPE_NAMES[dtype],
        "use_cache": True,
    }
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


# ---- models for inference ----


def _set_rotary_tables(model: Transformer, device) -> None:
    """The rotary tables are derived, never saved: compute them (in float32, as training does)."""
    cos, sin = rotary_tables(model.args.head_dim, model.args.max_seq_len, model.args.rope_theta, device=device)
    model.rope_cos, model.rope_sin = cos, sin


def load_model(
    path: Path, device, dtype: torch.dtype, flavor: str | None = None, tokenizer: Path | None = None
) -> tuple[Transformer, ModelSpec]:
    """Our model, in eval mode, from a DCP checkpoint or a Hugging Face folder, with what it is."""
    path = Path(path).expanduser()
    if is_hf_folder(path):
        args, tensors = read_hf_model(path)
        with torch.device("meta"):
            model = Transformer(args)
        model.load_state_dict(tensors, strict=True, assign=True)  # no second copy of the weights
        _set_rotary_tables(model, "cpu")  # the buffers are still on meta, which .to() cannot move
        model.to(device=device, dtype=dtype)
        spec = ModelSpec(
            args,
            matching_flavor(args),
            f"model arguments from {path / 'config.json'}",
            Path(tokenizer or path / "tokenizer.model"),
            "--tokenizer" if tokenizer else "the Hugging Face folder",
        )
    else:
        spec, _ = read_dcp_model(path, flavor, tokenizer)
        with torch.device("meta"):
            model = Transformer(spec.args)
        model.to(dtype=dtype).to_empty(device=device)
        load_dcp_into(path, model.state_dict())
    _set_rotary_tables(model, device)
    return model.eval(), spec


# ---- output folders ----


def parse_size(text: str) -> int:
    """Bytes from '500MB', '2GB', '1.5GiB' or a plain integer."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in units or float(match.group(1)) <= 0:
        raise UserError(f"size {text!r}: expected a positive number of bytes, or one with a unit such as 500MB or 2GB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def check_output_folder(out: Path, overwrite: bool, *sources: Path) -> None:
    """Refuse an existing output folder (unless `overwrite`), and one that would hold or replace an input."""
    out = out.expanduser().resolve()
    for source in sources:
        source = source.expanduser().resolve()
        if out == source or out in source.parents or source in out.parents:
            raise UserError(f"output folder {out}: must not be, hold or be inside the input {source}")
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out}: already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out}: exists and is not a folder")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the block succeeds (replacing an old
    `out` only then); removed if it fails, leaving `out` as it was."""
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
