"""Our state-dict names and model arguments <-> Hugging Face `LlamaForCausalLM`'s.

Both sides use the half-split rotary layout, so tensors move unchanged: only names differ. The
config.json fields are derived from `ModelArgs` here, and back, so export and import cannot drift.
"""

import re

import torch

from tinytitan.errors import UserError
from tinytitan.models.args import ROPE_SCALING_TYPES, ModelArgs

# Names outside the transformer blocks.
_TOP_LEVEL = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# Names inside block i: ours after "layers.{i}.", theirs after "model.layers.{i}.".
_PER_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}

_OURS_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_HF_TOP_LEVEL = {hf: ours for ours, hf in _TOP_LEVEL.items()}
_HF_PER_LAYER = {hf: ours for ours, hf in _PER_LAYER.items()}


def to_hf_name(name: str) -> str:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    match = _OURS_LAYER.fullmatch(name)
    if match and match.group(2) in _PER_LAYER:
        return f"model.layers.{match.group(1)}.{_PER_LAYER[match.group(2)]}"
    raise UserError(f"parameter {name!r}: not a tinytitan Llama parameter name")


def from_hf_name(name: str) -> str:
    if name in _HF_TOP_LEVEL:
        return _HF_TOP_LEVEL[name]
    match = _HF_LAYER.fullmatch(name)
    if match and match.group(2) in _HF_PER_LAYER:
        return f"layers.{match.group(1)}.{_HF_PER_LAYER[match.group(2)]}"
    raise UserError(f"parameter {name!r}: not a Hugging Face LlamaForCausalLM parameter name")


def to_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {to_hf_name(name): tensor for name, tensor in state_dict.items()}


def from_hf_state_dict(state_dict: dict[str, torch.Tensor], tied: bool = False) -> dict[str, torch.Tensor]:
    """Our names for a LlamaForCausalLM state dict. transformers derives the rotary tables (older
    checkpoints saved them) and we derive ours too; with tied embeddings lm_head.weight, when a
    file holds it, is the embedding again, which our state dict holds once (tok_embeddings.weight)."""
    dropped = ("lm_head.weight",) if tied else ()
    return {
        from_hf_name(name): tensor
        for name, tensor in state_dict.items()
        if not name.endswith("rotary_emb.inv_freq") and name not in dropped
    }


def to_hf_config(args: ModelArgs, bos_id: int = 1, eos_id: int = 2) -> dict:
    """The fields of a LlamaForCausalLM config.json that describe this model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "intermediate_size": args.ffn_hidden_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": args.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    } | _rope_scaling_fields(args)


def _rope_scaling_fields(args: ModelArgs) -> dict:
    """RoPE scaling as both versions of transformers read it: `rope_scaling` (4) and
    `rope_parameters` (5, which also holds rope_theta); nothing for plain rotary embeddings."""
    if args.rope_scaling_type == "default":
        return {}
    table = {"rope_type": args.rope_scaling_type, "factor": args.rope_scaling_factor}
    if args.rope_scaling_type == "llama3":
        table |= {
            "low_freq_factor": args.rope_low_freq_factor,
            "high_freq_factor": args.rope_high_freq_factor,
            "original_max_position_embeddings": args.rope_original_max_seq_len,
        }
    return {"rope_scaling": table, "rope_parameters": table | {"rope_theta": args.rope_theta}}


def _rope_fields(config: dict) -> dict:
    """The rotary base and scaling of a config.json as ModelArgs fields. transformers 5 writes
    `rope_parameters` (with `rope_type` and `rope_theta`); transformers 4 wrote `rope_scaling`, whose
    older files spell the kind `type` rather than `rope_type`. Kinds ModelArgs cannot express
    (dynamic, yarn, ...) are refused by ModelArgs itself, in one line."""
    tables = [table for table in (config.get("rope_parameters"), config.get("rope_scaling")) if table]
    theta = next((table["rope_theta"] for table in tables if "rope_theta" in table), None)
    fields = {"rope_theta": float(theta if theta is not None else config.get("rope_theta", 10000.0))}
    scaled = [table for table in tables if (table.get("rope_type", table.get("type")) or "default") != "default"]
    if not scaled:
        return fields
    table = scaled[0]
    kind = fields["rope_scaling_type"] = table.get("rope_type", table.get("type"))
    if kind not in ROPE_SCALING_TYPES:
        exact = " (its tables change with the sequence length)" if kind == "dynamic" else ""
        raise UserError(f"config rope type {kind!r}{exact}: expected one of {', '.join(ROPE_SCALING_TYPES)}")
    try:
        fields["rope_scaling_factor"] = float(table["factor"])
        if kind == "llama3":
            fields["rope_low_freq_factor"] = float(table["low_freq_factor"])
            fields["rope_high_freq_factor"] = float(table["high_freq_factor"])
            fields["rope_original_max_seq_len"] = table["original_max_position_embeddings"]
    except KeyError as missing:
        raise UserError(f"config rope type {kind!r} has no {missing.args[0]!r}: expected it with this kind") from None
    return fields


def _refuse_sliding_window(config: dict) -> None:
    """Mistral is Llama's architecture but for sliding-window attention: without a window (null, or
    one covering every position the model takes) it is the same model; with one it is not."""
    window, longest = config.get("sliding_window"), config.get("max_position_embeddings", 2048)
    if window is None or window >= longest:  # transformers masks distances >= sliding_window
        return
    raise UserError(
        f"config sliding_window={window}: expected null or at least max_position_embeddings={longest} "
        "(sliding-window attention is not implemented)"
    )


def from_hf_config(config: dict) -> ModelArgs:
    """ModelArgs from a LlamaForCausalLM (or window-less MistralForCausalLM) config.json dict
    (unknown extras are ignored)."""
    if config.get("model_type") not in ("llama", "mistral"):
        raise UserError(f"config model_type={config.get('model_type')!r}: expected 'llama' (or 'mistral')")
    _refuse_sliding_window(config)
    # Llama variants that ModelArgs cannot describe are refused rather than imported wrong.
    if config.get("hidden_act", "silu") != "silu":
        raise UserError(f"config hidden_act={config['hidden_act']!r}: expected 'silu' (SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UserError(f"config {key}=true: expected no biases, as in Llama 2")
    try:
        n_heads = config["num_attention_heads"]
        args = ModelArgs(
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=config.get("num_key_value_heads") or n_heads,
            vocab_size=config["vocab_size"],
            ffn_hidden_dim=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-5),
            max_seq_len=config.get("max_position_embeddings", 2048),
            head_dim=config.get("head_dim") or 0,  # absent or null: hidden_size / num_attention_heads
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            **_rope_fields(config),
        )
    except KeyError as missing:
        raise UserError(f"config has no {missing.args[0]!r}: expected a LlamaForCausalLM config") from None
    return args
