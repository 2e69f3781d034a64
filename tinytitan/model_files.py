"""Which model a file holds, and that model loaded for inference (generation, the converters).

Owns what a DCP checkpoint is: its model arguments (from --flavor, the run folder's config.toml,
or the model_args.json a conversion left beside it) and its tokenizer (from --tokenizer, the run's
data settings, or a tokenizer.model beside it); the check that stored tensors fit those arguments,
for DCP checkpoints and Hugging Face folders alike; and `load_model`. Reading the bytes is
`dcp_reader`'s and `hf.folder`'s.
"""

import dataclasses
import json
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import torch

from tinytitan import dcp_reader
from tinytitan.config import Data, JobConfig, load_config, model_args
from tinytitan.data.builtin_corpus import corpus_folder
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.files import atomic_write_json
from tinytitan.hf.folder import is_hf_folder, read_hf_folder
from tinytitan.kernels.rotary import model_rotary_tables
from tinytitan.models.args import FLAVORS, ModelArgs
from tinytitan.models.llama import Transformer
from tinytitan.run_folder import RunFolder

MODEL_ARGS_FILE = "model_args.json"  # written beside converted checkpoints, which have no run folder
TOKENIZER_FILE = "tokenizer.model"  # beside a converted checkpoint, or in a Hugging Face folder


@dataclass(frozen=True)
class ModelSpec:
    args: ModelArgs
    flavor: str | None  # the named flavor the arguments are, if any
    args_from: str  # where the arguments came from, for messages
    tokenizer_path: Path | None
    tokenizer_from: str
    chat_template: str = ""  # what the run finetuned on (its config's data.chat_template), for the export


# What each conversion writes: `--overwrite` replaces only a folder holding these and its marker
# (the first name), or an empty one, so that it never deletes a folder of something else.
HF_EXPORT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
DCP_IMPORT_FILES = (".metadata", "*.distcp", MODEL_ARGS_FILE, TOKENIZER_FILE, dcp_reader.MANIFEST_FILE)


def require_replaceable(out: Path, files: tuple[str, ...], script: str) -> None:
    """Refuse to replace an existing `out` that is not empty and not an earlier output of `script`."""
    out = Path(out).expanduser()
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = files[0]
    other = sorted(p.name for p in out.iterdir() if not p.is_file() or not any(fnmatch(p.name, f) for f in files))
    if other or not (out / marker).is_file():
        held = f"holds {other[0]}" if other else f"has no {marker}"
        raise UserError(
            f"output folder {out}: --overwrite replaces only an earlier output of {script} "
            f"({marker} and the files it writes), but this folder {held}; choose another folder"
        )


def matching_flavor(args: ModelArgs) -> str | None:
    return next((name for name, flavor in FLAVORS.items() if flavor == args), None)


def flavor_args(name: str, what: str) -> ModelArgs:
    if name not in FLAVORS:
        raise UserError(f"{what} {name!r}: expected one of {', '.join(FLAVORS)}")
    return FLAVORS[name]


def run_config(checkpoint: Path) -> tuple[Path, JobConfig] | None:
    """The config.toml of the run folder holding `checkpoint` (read as training reads it), if any."""
    run = RunFolder.of_checkpoint(checkpoint)
    if run is None:
        return None
    return run.config, load_config([f"--job.config_file={run.config}"])


def run_tokenizer(data: Data) -> Path | None:
    """The tokenizer a run trained with: data.tokenizer_path, or the built-in corpus's own."""
    if data.tokenizer_path:
        return Path(data.tokenizer_path).expanduser()
    if data.dataset in ("builtin", "builtin_chat"):  # the conversations use the corpus's tokenizer
        return corpus_folder(data.cache_dir) / TOKENIZER_FILE
    return None


def read_model_args_file(path: Path) -> tuple[ModelArgs, str | None]:
    try:
        record = json.loads(path.read_text())
        return ModelArgs(**record["model_args"]), record.get("flavor")
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f"{path}: expected the model arguments written by convert_hf_to_dcp.py ({error})") from None


def write_model_args_file(folder: Path, args: ModelArgs, flavor: str | None) -> None:
    atomic_write_json(folder / MODEL_ARGS_FILE, {"flavor": flavor, "model_args": dataclasses.asdict(args)})


def _as_json(args: ModelArgs) -> dict:
    """The arguments as model_args.json holds them (nested records as dicts, tuples as lists), so
    that arguments read back from the file compare equal to the ones they were written from."""
    return json.loads(json.dumps(dataclasses.asdict(args)))


# The arguments a run continuing a checkpoint at a longer context may change (with
# checkpoint.initial_load_extends_context): the rotary tables' base, scaling and length, which
# hold no weights; a longer max_seq_len only.
CONTEXT_FIELDS = (
    "rope_theta",
    "rope_scaling_type",
    "rope_scaling_factor",
    "rope_low_freq_factor",
    "rope_high_freq_factor",
    "rope_original_max_seq_len",
    "max_seq_len",
)


def check_model_args(
    checkpoint: Path, args: ModelArgs, what: str, model_from: str, advice: str, may_differ: tuple[str, ...] = ()
) -> dict[str, tuple]:
    """Refuse a checkpoint whose model_args.json differs from `args` in any field but those of
    `may_differ`, naming each field with both values (one place for resume, initial_load_path and
    the scripts); returns the fields of `may_differ` that differ, {name: (saved, ours)}. A shorter
    max_seq_len than the checkpoint's is refused even there. A checkpoint without the file (written
    before checkpoints carried it) is left to the shape checks."""
    path = checkpoint / MODEL_ARGS_FILE
    if not path.is_file():
        return {}
    saved, ours = _as_json(read_model_args_file(path)[0]), _as_json(args)
    differing = [field.name for field in dataclasses.fields(ModelArgs) if saved[field.name] != ours[field.name]]
    allowed = {name: (saved[name], ours[name]) for name in differing if name in may_differ}
    if "max_seq_len" in allowed and ours["max_seq_len"] < saved["max_seq_len"]:
        allowed.pop("max_seq_len")
        advice = "a context extension takes a max_seq_len at least the checkpoint's"
    refused = [name for name in differing if name not in allowed]
    if refused:
        values = "; ".join(
            f"{name} = {saved[name]!r} in the checkpoint's {MODEL_ARGS_FILE}, {ours[name]!r} in {model_from}"
            for name in refused[:3]
        ) + (f" (and {len(refused) - 3} more fields)" if len(refused) > 3 else "")
        raise UserError(f"{what} {checkpoint}: {values} ({advice})")
    return allowed


def describe_changes(changes: dict[str, tuple]) -> str:
    """What check_model_args let differ, in one line: "max_seq_len 256 -> 512, ..."."""
    return ", ".join(f"{name} {saved!r} -> {ours!r}" for name, (saved, ours) in changes.items())


def describe_checkpoint(checkpoint: Path, flavor: str | None = None, tokenizer: Path | None = None) -> ModelSpec:
    """Model arguments and tokenizer of a DCP checkpoint: the command line's (which must agree with
    the checkpoint's own model_args.json, if it has one), else that model_args.json (every checkpoint
    saved by training or a conversion carries it), else the run folder's config.toml (checkpoints
    saved before they carried it; a later run may have rewritten config.toml)."""
    run = run_config(checkpoint)
    args_file = checkpoint / MODEL_ARGS_FILE
    if flavor:
        args, args_from = flavor_args(flavor, "--flavor"), f"flavor {flavor!r} from --flavor"
        advice = "the checkpoint was saved with other model arguments: drop --flavor to use its own"
        check_model_args(checkpoint, args, "checkpoint", args_from, advice)
    elif args_file.is_file():
        args, flavor = read_model_args_file(args_file)
        args_from = (f"flavor {flavor!r}" if flavor else "model arguments") + f" from {args_file}"
    elif run:
        args, flavor = model_args(run[1].model), matching_flavor(model_args(run[1].model))  # as training resolved it
        args_from = f"flavor {run[1].model.flavor!r} and the [model] keys from {run[0]}"
    else:
        raise UserError(
            f"checkpoint {checkpoint}: no run config.toml above it and no {MODEL_ARGS_FILE} in it; "
            f"pass --flavor (one of {', '.join(FLAVORS)})"
        )

    run_tokenizer_path = run_tokenizer(run[1].data) if run else None
    if tokenizer:
        tokenizer_path, tokenizer_from = Path(tokenizer).expanduser(), "--tokenizer"
    elif run_tokenizer_path:
        tokenizer_path, tokenizer_from = run_tokenizer_path, f"the run config {run[0]}"
    elif (checkpoint / TOKENIZER_FILE).is_file():
        tokenizer_path, tokenizer_from = checkpoint / TOKENIZER_FILE, "beside the checkpoint"
    else:
        tokenizer_path, tokenizer_from = None, "nowhere"
    chat_template = run[1].data.chat_template if run else ""
    return ModelSpec(args, flavor, args_from, tokenizer_path, tokenizer_from, chat_template)


def require_tokenizer(spec: ModelSpec, model_path: Path) -> Tokenizer:
    """The spec's tokenizer, checked to exist and to fit the model's vocabulary."""
    if spec.tokenizer_path is None:
        raise UserError(
            f"checkpoint {model_path}: cannot tell which tokenizer it was trained with; pass --tokenizer PATH"
        )
    if not spec.tokenizer_path.is_file():
        raise UserError(
            f"tokenizer {spec.tokenizer_path} (from {spec.tokenizer_from}): no such file; pass --tokenizer PATH"
        )
    return Tokenizer(spec.tokenizer_path).check_fits(spec.args.vocab_size, spec.args_from)


def expected_shapes(args: ModelArgs) -> dict[str, torch.Size]:
    """Our parameter names and shapes for `args`, in the model's order (built on meta: no memory)."""
    with torch.device("meta"):
        model = Transformer(args)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def check_shapes(found: dict[str, torch.Size], args: ModelArgs, what: str, args_from: str) -> None:
    """Refuse stored tensors that are not exactly the model's parameters, naming the first few."""
    expected = expected_shapes(args)
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    wrong = [
        f"{name} {tuple(found[name])} (expected {tuple(shape)})"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    problems = [f"missing {_first_few(missing)}"] if missing else []
    problems += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
    problems += [f"shape of {', '.join(wrong[:3])}"] if wrong else []
    if problems:
        raise UserError(f"{what}: its tensors do not fit the model of {args_from}: {'; '.join(problems)}")


def _first_few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def read_dcp_model(
    checkpoint: Path, flavor: str | None = None, tokenizer: Path | None = None
) -> tuple[ModelSpec, dict]:
    """What the checkpoint is, and its model tensors' metadata, checked against the model arguments."""
    checkpoint = Path(checkpoint).expanduser()
    metadata = dcp_reader.model_metadata(checkpoint)
    spec = describe_checkpoint(checkpoint, flavor, tokenizer)
    found = {name: value.size for name, value in metadata.items()}
    check_shapes(found, spec.args, f"checkpoint {checkpoint}", spec.args_from)
    return spec, metadata


def read_hf_model(folder: Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """A Hugging Face Llama folder's model arguments and its tensors under our names, checked."""
    folder = Path(folder).expanduser()
    args, tensors = read_hf_folder(folder)
    found = {name: tensor.shape for name, tensor in tensors.items()}
    check_shapes(found, args, f"{folder}", f"{folder / 'config.json'}")
    return args, tensors


def _set_rotary_tables(model: Transformer, device) -> None:
    """The rotary tables are derived, never saved: compute them (in float32, as training does)."""
    cos, sin = model_rotary_tables(model.args, device=device)
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
            Path(tokenizer or path / TOKENIZER_FILE),
            "--tokenizer" if tokenizer else "the Hugging Face folder",
        )
    else:
        spec, _ = read_dcp_model(path, flavor, tokenizer)
        with torch.device("meta"):
            model = Transformer(spec.args)
        model.to(dtype=dtype).to_empty(device=device)
        dcp_reader.load_model_into(path, model.state_dict())
    _set_rotary_tables(model, device)
    return model.eval(), spec
