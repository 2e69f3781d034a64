#!/usr/bin/env python3
"""Export a tinytitan checkpoint as a Hugging Face Llama folder that transformers loads offline.

    python scripts/convert_dcp_to_hf.py outputs/debug/checkpoints/step-200 hf/debug --dtype bfloat16

CKPT_DIR is a Distributed Checkpoint folder written by any number of ranks: a training checkpoint
(only its model tensors are read, never the optimizer's) or a model-only one (step-<N>-model, or
what convert_hf_to_dcp.py wrote). It runs in one CPU process without a process group. The flavor
and the tokenizer come from the run's config.toml when the checkpoint sits in a run folder
(<run>/checkpoints/step-<N>), else from the files convert_hf_to_dcp.py left beside it, else from
--flavor and --tokenizer, which also override both.

OUT_DIR receives config.json, generation_config.json, model.safetensors (or shards of at most
--max-shard-size with model.safetensors.index.json) and the tokenizer: tokenizer.model,
tokenizer.json, tokenizer_config.json and special_tokens_map.json, built so that
AutoTokenizer gives the same ids as sentencepiece (see tinytitan/hf/tokenizer.py), with the
run's chat template (data.chat_template of its config.toml) after finetuning on conversations. It is
written under a temporary name and renamed when complete; an existing OUT_DIR is refused unless
--overwrite, which replaces only an earlier export (a folder with config.json and nothing but the
files listed above) or an empty folder. CKPT_DIR is verified against its manifest.json first (a
checkpoint written before manifests is read with a note that it is unverified). Memory: one
shard's tensors at a time.
"""

import argparse
from pathlib import Path

import torch

from tinytitan import dcp_reader
from tinytitan.dtypes import ALIASES, DTYPE_NAMES, dtype_name, torch_dtype
from tinytitan.errors import UserError, run_entry_point
from tinytitan.files import check_output_folder, folder_bytes, staged_folder
from tinytitan.hf.folder import parse_size, plan_shards, write_hf_config, write_hf_weights
from tinytitan.hf.mapping import to_hf_name
from tinytitan.hf.tokenizer import pad_id, write_hf_tokenizer
from tinytitan.model_files import (
    HF_EXPORT_FILES,
    expected_shapes,
    read_dcp_model,
    require_replaceable,
    require_tokenizer,
)

FP16_MAX = torch.finfo(torch.float16).max


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, metavar="CKPT_DIR", help="DCP checkpoint folder (holds .metadata)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="Hugging Face folder to write")
    parser.add_argument(
        "--dtype",
        choices=(*DTYPE_NAMES, *ALIASES),
        metavar="{" + ",".join(DTYPE_NAMES) + "}",
        help="weights' dtype (default: as stored in the checkpoint; bf16, fp16 and fp32 also read)",
    )
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece tokenizer.model (default: the run's)")
    parser.add_argument("--flavor", help="model flavor (default: the run's, or the converted checkpoint's arguments)")
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors file before sharding (default: 5GB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is an earlier export")
    return parser.parse_args(argv)


def stored_dtype(metadata: dict) -> torch.dtype:
    dtypes = {value.properties.dtype for value in metadata.values()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def shard_loader(checkpoint: Path, metadata: dict, dtype: torch.dtype):
    """Reads a shard's tensors from the checkpoint, in `dtype`, under Hugging Face names."""

    def load(names: list[str]) -> dict[str, torch.Tensor]:
        tensors = dcp_reader.read_model(checkpoint, metadata, names)
        for name, tensor in tensors.items():
            if dtype == torch.float16 and tensor.abs().max().item() > FP16_MAX:
                raise UserError(
                    f"checkpoint {checkpoint}: {name} has values beyond float16's range; "
                    "use --dtype bfloat16 or float32"
                )
        return {to_hf_name(name): tensor.to(dtype).contiguous() for name, tensor in tensors.items()}

    return load


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    checkpoint, out = options.checkpoint.expanduser(), options.out_dir.expanduser()
    max_shard_bytes = parse_size(options.max_shard_size)
    check_output_folder(out, options.overwrite, checkpoint)
    require_replaceable(out, HF_EXPORT_FILES, "convert_dcp_to_hf.py")
    spec, metadata = read_dcp_model(checkpoint, options.flavor, options.tokenizer)
    tokenizer = require_tokenizer(spec, checkpoint)
    dtype = torch_dtype(options.dtype) if options.dtype else stored_dtype(metadata)

    shapes = expected_shapes(spec.args)  # the model's order: embeddings, blocks, norm, output
    sizes = {name: shape.numel() * dtype.itemsize for name, shape in shapes.items()}
    shards = plan_shards(sizes, max_shard_bytes)
    with staged_folder(out) as staging:
        # first: it may refuse the tokenizer
        write_hf_tokenizer(spec.tokenizer_path, staging, spec.args.max_seq_len, spec.chat_template)
        write_hf_config(staging, spec.args, dtype, tokenizer.bos_id, tokenizer.eos_id, pad_id(spec.tokenizer_path))
        files = write_hf_weights(staging, shards, shard_loader(checkpoint, metadata, dtype))
        written = folder_bytes(staging)

    print(
        f"wrote {out}: LlamaForCausalLM ({spec.args_from}), {sum(s.numel() for s in shapes.values()):,} "
        f"parameters in {dtype_name(dtype)}, {len(files)} safetensors file(s), {written / 1e6:,.1f} MB in all; "
        f"tokenizer of {tokenizer.vocab_size} pieces from {spec.tokenizer_from} ({spec.tokenizer_path})"
        + (f", chat template {spec.chat_template}" if spec.chat_template else ""),
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point(main)
