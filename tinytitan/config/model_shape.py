"""The model's shape from the config: `model.flavor` is the starting point and every other shape key
of [model] overrides one of its arguments (0 or "" keep the flavor's). With no flavor (""), the
starting point is the model_args.json of checkpoint.initial_load_path (a converted Hugging Face
model, any shape), else debug; a key set to another value than the checkpoint's is then refused.
Torch-free, like the rest of the config, so the launcher's pre-check refuses a bad shape in one line
before any worker starts."""

import dataclasses
import json
from pathlib import Path

from tinytitan.config.schema import Checkpoint, ConfigError, Model, toml_value
from tinytitan.errors import UserError
from tinytitan.models.args import FLAVORS, MODEL_ARG_NAMES, ModelArgs

# The [model] keys that override a ModelArgs field of the same name.
SHAPE_KEYS = tuple(name for name in MODEL_ARG_NAMES if name != "tie_embeddings")
# The keys a checkpoint's arguments may be changed by when it is continued at a longer context.
CONTEXT_KEYS = tuple(name for name in SHAPE_KEYS if name == "max_seq_len" or name.startswith("rope_"))
DEFAULT_FLAVOR = "debug"  # with no flavor and no checkpoint arguments
MODEL_ARGS_FILE = "model_args.json"  # beside every checkpoint and conversion (model_files writes it)


def model_args(model: Model, tokenizer_vocab: int | None = None, checkpoint: Checkpoint | None = None) -> ModelArgs:
    """The flavor with the [model] overrides. vocab_size = 0 is the tokenizer's vocabulary when it
    is known (`tokenizer_vocab`), else the flavor's; an explicit one must hold the tokenizer's ids.
    With no flavor and a `checkpoint.initial_load_path` that carries its arguments, those arguments."""
    saved = initial_load_args(model, checkpoint)
    if saved is not None:
        return _checkpoint_args(model, saved, tokenizer_vocab, checkpoint)
    flavor = FLAVORS[model.flavor or DEFAULT_FLAVOR]
    fields = {name: getattr(model, name) or getattr(flavor, name) for name in SHAPE_KEYS}
    fields["tie_embeddings"] = model.tie_embeddings
    if not model.head_dim and (model.dim or model.n_heads) and flavor.head_dim == flavor.dim // flavor.n_heads:
        fields["head_dim"] = 0  # the flavor's is derived from its width: derive it from the new one
    if not model.vocab_size and tokenizer_vocab:
        fields["vocab_size"] = tokenizer_vocab
    if tokenizer_vocab and fields["vocab_size"] < tokenizer_vocab:
        raise ConfigError(
            f"model.vocab_size = {fields['vocab_size']}: expected at least the tokenizer's {tokenizer_vocab} pieces "
            "(0: the tokenizer's)"
        )
    try:
        return ModelArgs(**fields)
    except UserError as error:
        overrides = ", ".join(f"{key} = {toml_value(getattr(model, key))}" for key in _set_keys(model))
        message = str(error).replace("model arguments ", "model.").replace("model argument ", "model.")
        flavor = model.flavor or DEFAULT_FLAVOR
        raise ConfigError(f"{message} (flavor {flavor!r}{'; ' + overrides if overrides else ''})") from None


def initial_load_args(model: Model, checkpoint: Checkpoint | None) -> ModelArgs | None:
    """The saved arguments of checkpoint.initial_load_path when no flavor is named and it has them
    (a checkpoint saved before checkpoints carried them has none: the shape is then debug's)."""
    if model.flavor or checkpoint is None or not checkpoint.initial_load_path:
        return None
    path = Path(checkpoint.initial_load_path).expanduser() / MODEL_ARGS_FILE
    if not path.is_file():
        return None
    try:
        return ModelArgs(**json.loads(path.read_text())["model_args"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{path}: expected the model arguments a checkpoint or conversion writes ({error})") from None
    except UserError as error:
        raise ConfigError(f"{path}: {error}") from None


def _checkpoint_args(model: Model, saved: ModelArgs, tokenizer_vocab: int | None, checkpoint: Checkpoint) -> ModelArgs:
    """The checkpoint's arguments. A [model] key set to another value is refused in one line (the
    weights have the checkpoint's shape), except the RoPE keys and max_seq_len of a run that
    extends the context (checkpoint.initial_load_extends_context), which override them."""
    extends = getattr(checkpoint, "initial_load_extends_context", False)
    fields = dataclasses.asdict(saved)
    for key in _set_keys(model):
        value = getattr(model, key)
        if extends and key in CONTEXT_KEYS:
            fields[key] = value
        elif value != fields[key]:
            raise ConfigError(
                f"model.{key} = {toml_value(value)}: differs from {toml_value(fields[key])} in "
                f"{Path(checkpoint.initial_load_path) / MODEL_ARGS_FILE} (checkpoint.initial_load_path's model, which "
                'model.flavor = "" starts from): drop the key, or name a flavor to start from instead'
            )
    if tokenizer_vocab and saved.vocab_size < tokenizer_vocab:
        raise ConfigError(
            f"checkpoint.initial_load_path {checkpoint.initial_load_path}: its vocab_size {saved.vocab_size} is "
            f"smaller than the tokenizer's {tokenizer_vocab} pieces: expected a tokenizer that fits the model"
        )
    try:
        return ModelArgs(**fields)
    except UserError as error:
        raise ConfigError(f"{error} (checkpoint.initial_load_path's model with the [model] keys)") from None


def _set_keys(model: Model) -> list[str]:
    return [key for key in (*SHAPE_KEYS, "tie_embeddings") if getattr(model, key)]


def with_shape(model: Model, args: ModelArgs) -> Model:
    """`model` with every shape key set to the resolved value, so the run folder's config.toml
    says the shape itself (export and resume read it back unchanged, whatever the flavors become)."""
    return dataclasses.replace(model, **{name: getattr(args, name) for name in MODEL_ARG_NAMES})


def shape_source(model: Model, checkpoint: Checkpoint | None = None) -> str:
    """Where the shape starts from, for messages: the flavor, or the checkpoint's arguments."""
    if not model.flavor and checkpoint is not None and initial_load_args(model, checkpoint) is not None:
        return f"the arguments in {Path(checkpoint.initial_load_path) / MODEL_ARGS_FILE}"
    return f"flavor {model.flavor or DEFAULT_FLAVOR!r}"


def describe_shape(args: ModelArgs) -> str:
    """The shape in one line, for the start of a run."""
    scaling = (
        ""
        if args.rope_scaling_type == "default"
        else f", rope scaling {args.rope_scaling_type} x{args.rope_scaling_factor:g}"
    )
    return (
        f"dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads of {args.head_dim} ({args.n_kv_heads} kv), "
        f"ffn {args.ffn_hidden_dim}, vocab {args.vocab_size}{' tied' if args.tie_embeddings else ''}, "
        f"rope theta {args.rope_theta:g}{scaling}, max_seq_len {args.max_seq_len}"
    )
