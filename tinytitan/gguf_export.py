"""Our model as a GGUF file for llama.cpp, written with `gguf`, llama.cpp's own Python package.

It writes what llama.cpp's `convert_hf_to_gguf.py` writes for an exported Llama folder: the
`llama` architecture's hyperparameters, the sentencepiece vocabulary (pieces, scores, token types;
ids beyond the tokenizer's pieces as unused `[PAD<id>]`), bos/eos/unk/pad ids, and the tensors under
llama.cpp's names. Norms stay float32; the matrices are f32, f16, bf16 or q8_0 (a matrix whose rows
are not whole 32-value blocks falls back to f16, as llama.cpp's converter does). llama.cpp
rotates adjacent pairs of a head's dimensions, where we (and Hugging Face) rotate its two halves,
so the query and key rows are reordered as llama.cpp's converter reorders them: the attention
scores are unchanged (the tests check it).
"""

import os
from pathlib import Path

import numpy as np
import torch

from tinytitan.errors import UserError
from tinytitan.models.args import ModelArgs

try:
    import gguf
except ImportError:  # an optional extra: say how to get it, in one line
    gguf = None

OUTTYPES = ("f32", "f16", "bf16", "q8_0")

# sentencepiece's piece kinds, as llama.cpp's converter numbers them (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def require_gguf():
    if gguf is None:
        raise UserError("the gguf package is not installed: pip install 'tinytitan[gguf]' (or pip install gguf)")
    return gguf


def gguf_name(name: str) -> str:
    """llama.cpp's tensor name for one of ours."""
    fixed = {
        "tok_embeddings.weight": "token_embd.weight",
        "norm.weight": "output_norm.weight",
        "output.weight": "output.weight",
    }
    if name in fixed:
        return fixed[name]
    _, layer, *rest = name.split(".")  # layers.<i>.<module>.<linear>.weight
    block = {
        "attention_norm.weight": "attn_norm.weight",
        "attention.wq.weight": "attn_q.weight",
        "attention.wk.weight": "attn_k.weight",
        "attention.wv.weight": "attn_v.weight",
        "attention.wo.weight": "attn_output.weight",
        "ffn_norm.weight": "ffn_norm.weight",
        "feed_forward.w1.weight": "ffn_gate.weight",
        "feed_forward.w3.weight": "ffn_up.weight",
        "feed_forward.w2.weight": "ffn_down.weight",
    }
    return f"blk.{layer}.{block['.'.join(rest)]}"


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """A query or key projection [heads * head_dim, dim] with each head's rows reordered from the
    half-split rotary layout (i, i + head_dim/2 rotate together) to the adjacent-pairs one
    (2i, 2i+1): llama.cpp's converter's `permute`."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def vocabulary(tokenizer_path: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and token types of a sentencepiece model, padded to the model's vocabulary."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores, types = [-10000.0] * vocab_size, [UNUSED] * vocab_size
    for i in range(processor.vocab_size()):
        tokens[i], scores[i] = processor.id_to_piece(i).encode("utf-8"), processor.get_score(i)
        types[i] = (
            UNKNOWN
            if processor.is_unknown(i)
            else CONTROL
            if processor.is_control(i)
            else UNUSED
            if processor.is_unused(i)
            else BYTE
            if processor.is_byte(i)
            else NORMAL
        )
    return tokens, scores, types


def write_hyperparameters(writer, args: ModelArgs, name: str) -> None:
    if args.rope_scaling_type == "llama3":
        raise UserError(
            "model argument rope_scaling_type='llama3': not written to GGUF by this script; "
            "export with convert_dcp_to_hf.py and use llama.cpp's convert_hf_to_gguf.py"
        )
    writer.add_name(name)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.n_kv_heads)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_key_length(args.head_dim)
    writer.add_value_length(args.head_dim)
    writer.add_vocab_size(args.vocab_size)
    writer.add_rope_dimension_count(args.head_dim)
    if args.rope_scaling_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(args.rope_scaling_factor)


def write_vocabulary(writer, tokenizer_path: Path, vocab_size: int, bos_id: int, eos_id: int, unk_id: int) -> None:
    tokens, scores, types = vocabulary(tokenizer_path, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_unk_token_id(unk_id)
    writer.add_pad_token_id(unk_id)  # as our Hugging Face export pads: Llama 2 has no padding piece
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def tensor_data(name: str, tensor: torch.Tensor, outtype: str) -> tuple[np.ndarray, object]:
    """The array to write and its GGML type: norms in float32, matrices in `outtype`."""
    types = gguf.GGMLQuantizationType
    data = tensor.float().numpy()
    if data.ndim == 1 or outtype == "f32":
        return data, types.F32
    wanted = {"f16": types.F16, "bf16": types.BF16, "q8_0": types.Q8_0}[outtype]
    try:
        return gguf.quants.quantize(data, wanted), wanted
    except gguf.QuantError:  # rows not whole blocks: llama.cpp's converter writes these as f16
        return gguf.quants.quantize(data, types.F16), types.F16


def write_gguf(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    tokenizer_path: Path,
    ids: tuple[int, int, int],
    outtype: str,
    name: str,
) -> dict[str, str]:
    """Write the model to `path` (under a temporary name, renamed when complete); returns each
    tensor's GGML type by llama.cpp name."""
    require_gguf()
    file_types = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(partial, "llama")
    write_hyperparameters(writer, args, name)
    writer.add_file_type(getattr(gguf.LlamaFileType, file_types[outtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocabulary(writer, tokenizer_path, args.vocab_size, *ids)
    written = {}
    for ours, tensor in state_dict.items():
        if ours.endswith(("wq.weight", "wk.weight")):
            heads = args.n_heads if ours.endswith("wq.weight") else args.n_kv_heads
            tensor = interleave_rotary_rows(tensor, heads)
        data, kind = tensor_data(ours, tensor, outtype)
        writer.add_tensor(gguf_name(ours), data, raw_dtype=kind)
        written[gguf_name(ours)] = kind.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, path)
    return written
