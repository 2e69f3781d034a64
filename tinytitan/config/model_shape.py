"""The model's shape from the config: `model.flavor` is the starting point and every other shape key
of [model] overrides one of its arguments (0 or "" keep the flavor's). Torch-free, like the rest of
the config, so the launcher's pre-check refuses a bad shape in one line before any worker starts."""

import dataclasses

from tinytitan.config.schema import ConfigError, Model, toml_value
from tinytitan.errors import UserError
from tinytitan.models.args import FLAVORS, MODEL_ARG_NAMES, ModelArgs

# The [model] keys that override a ModelArgs field of the same name.
SHAPE_KEYS = tuple(name for name in MODEL_ARG_NAMES if name != "tie_embeddings")


def model_args(model: Model, tokenizer_vocab: int | None = None) -> ModelArgs:
    """The flavor with the [model] overrides. vocab_size = 0 is the tokenizer's vocabulary when it
    is known (`tokenizer_vocab`), else the flavor's; an explicit one must hold the tokenizer's ids."""
    flavor = FLAVORS[model.flavor]
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
        raise ConfigError(f"{message} (flavor {model.flavor!r}{'; ' + overrides if overrides else ''})") from None


def _set_keys(model: Model) -> list[str]:
    return [key for key in (*SHAPE_KEYS, "tie_embeddings") if getattr(model, key)]


def with_shape(model: Model, args: ModelArgs) -> Model:
    """`model` with every shape key set to the resolved value, so the run folder's config.toml
    says the shape itself (export and resume read it back unchanged, whatever the flavors become)."""
    return dataclasses.replace(model, **{name: getattr(args, name) for name in MODEL_ARG_NAMES})


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
