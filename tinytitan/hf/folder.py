"""Hugging Face model folders read and written: config.json, and the weights as safetensors or
pytorch_model*.bin files, sharded (with their index) or not. Names and config fields come from
`mapping`; this module only moves bytes.

torch.distributed.checkpoint's HuggingFaceStorageReader/Writer (torch >= 2.8) are not used: the
reader takes no `.bin` weights and reads every *.safetensors file in the folder rather than those
its index lists (so a missing shard goes unnoticed), and the writer saves the whole state dict in
one call (the export holds one shard in memory), names a single file model-00001-of-00001
and has no byte limit per file (--max-shard-size); both would bring DCP's errors instead of ours.
"""

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from tinytitan.dtypes import dtype_name
from tinytitan.errors import QUOTED_ERROR_LIMIT, UserError, one_line
from tinytitan.hf.mapping import from_hf_config, from_hf_state_dict, to_hf_config
from tinytitan.models.args import ModelArgs

SHARDED_INDEXES = (  # (index of a sharded save, the single file of an unsharded one), preferred first
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def read_hf_config(folder: Path) -> ModelArgs:
    """The model arguments of a folder's config.json (a Llama 2 shape, or a UserError naming the file)."""
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    try:
        return from_hf_config(config)
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def read_hf_folder(folder: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A folder's model arguments and its tensors under our names, through `from_hf_state_dict` (the
    mapping the parity tests check). Their shapes are not checked here: model_files does that."""
    folder = Path(folder).expanduser()
    args = read_hf_config(folder)
    try:
        tensors = dict(iter_hf_tensors(hf_weight_files(folder)))
        return args, from_hf_state_dict(tensors, tied=args.tie_embeddings)  # a tied lm_head.weight, if saved
    except UserError as error:
        raise UserError(f"{folder}: {error}") from None


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: safetensors preferred, sharded (by index) or not."""
    for index_name, single_name in SHARDED_INDEXES:
        if (folder / index_name).is_file():
            return _indexed_files(folder, index_name)
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise UserError(f"{folder}: no weights (expected model.safetensors, pytorch_model.bin, or their sharded index)")


def _indexed_files(folder: Path, index_name: str) -> list[Path]:
    try:
        weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{folder / index_name}: expected a weight_map ({error})") from None
    files = [folder / name for name in dict.fromkeys(weight_map.values())]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise UserError(f"{folder}: incomplete: weight file(s) {', '.join(missing)} listed in {index_name} are missing")
    return files


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
                raise UserError(
                    f"{file}: not a readable safetensors file ({one_line(error, QUOTED_ERROR_LIMIT)})"
                ) from None
        else:
            yield from _load_torch_file(file).items()


def _load_torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model*.bin, memory-mapped when it has the zip format (older files are read whole)."""
    for mmap in (True, False):
        try:
            return torch.load(file, map_location="cpu", mmap=mmap, weights_only=True)
        except Exception as error:  # torch.load fails in many ways on a damaged file
            if mmap and isinstance(error, RuntimeError) and "mmap" in str(error):
                continue
            detail = one_line(f"{type(error).__name__}: {error}", QUOTED_ERROR_LIMIT)
            raise UserError(f"{file}: not a readable PyTorch weights file ({detail})") from None


def parse_size(text: str) -> int:
    """Bytes from '500MB', '2GB', '1.5GiB' or a plain integer."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    size = float(match.group(1)) * units[unit] if unit in units else math.nan
    if not 1 <= size < math.inf:  # NaN fails too; so do a fraction of a byte and a number beyond any float
        raise UserError(f"size {text!r}: expected a positive number of bytes, or one with a unit such as 500MB or 2GB")
    return int(size)


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


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("writing Hugging Face weights needs the safetensors package: pip install safetensors") from None
    return safetensors.torch


def write_hf_weights(
    folder: Path, shards: list[list[str]], load_shard: Callable[[list[str]], dict[str, torch.Tensor]]
) -> list[str]:
    """Write each shard's tensors (Hugging Face names -> tensors, from `load_shard(names)`) as
    safetensors, one shard in memory at a time; with several, also model.safetensors.index.json."""
    save_file = _safetensors().save_file
    count = len(shards)
    files = (
        ["model.safetensors"]
        if count == 1
        else [f"model-{n:05d}-of-{count:05d}.safetensors" for n in range(1, count + 1)]
    )
    weight_map, total_bytes = {}, 0
    for file, names in zip(files, shards):
        tensors = load_shard(names)
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in tensors})
        total_bytes += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        del tensors
    if count > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / SHARDED_INDEXES[0][0]).write_text(json.dumps(index, indent=2) + "\n")
    return files


def write_hf_config(
    folder: Path, args: ModelArgs, dtype: torch.dtype, bos_id: int, eos_id: int, pad_id: int | None = None
) -> None:
    """config.json (every field LlamaForCausalLM needs, from `mapping`) and generation_config.json,
    which names the tokenizer's pad id so that batched generate() needs no argument for it (it is
    not in config.json, where it would freeze that embedding row in fine-tuning)."""
    # transformers 5 reads "dtype", earlier versions "torch_dtype".
    name = dtype_name(dtype)
    config = {**to_hf_config(args, bos_id, eos_id), "dtype": name, "torch_dtype": name, "use_cache": True}
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id} | (
        {"pad_token_id": pad_id} if pad_id is not None else {}
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
