#!/usr/bin/env python3
"""Write a tinytitan checkpoint (or an exported Hugging Face folder) as one GGUF file for llama.cpp.

    python scripts/convert_dcp_to_gguf.py outputs/debug/checkpoints/step-200 debug-f16.gguf --outtype f16
    llama-cli -m debug-f16.gguf -p "The list of" -n 64 --temp 0

Needs the `gguf` package (llama.cpp's own writer: pip install 'tinytitan[gguf]'). The model and the
tokenizer are found as generate.py finds them. --outtype f32, f16 (default), bf16 or q8_0; the
norms stay float32, and a matrix whose rows are not whole 32-value blocks is written in f16 under
q8_0 (the debug flavor's ffn_down, 688 wide). For q4_0, q4_k_m and the other 4-bit types, run
llama.cpp's `llama-quantize` on the f16 file: see docs/llama_cpp.md. The file is written under
a temporary name and renamed when complete; an existing file is refused unless --overwrite.
"""

import argparse
from pathlib import Path

import torch

from tinytitan.errors import UserError, run_entry_point
from tinytitan.gguf_export import OUTTYPES, require_gguf, write_gguf
from tinytitan.model_files import load_model, require_tokenizer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, metavar="CKPT_OR_HF_DIR", help="DCP checkpoint or Hugging Face folder")
    parser.add_argument("out", type=Path, metavar="OUT_FILE", help="the .gguf file to write")
    parser.add_argument("--outtype", choices=OUTTYPES, default="f16", help="matrices' type (default: f16)")
    parser.add_argument("--name", help="the model's name in the file (default: the input folder's name)")
    parser.add_argument("--flavor", help="model flavor, for a checkpoint outside a run folder")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece tokenizer.model (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_FILE if it exists")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    require_gguf()
    out = options.out.expanduser()
    if out.exists() and not (options.overwrite and out.is_file()):
        raise UserError(f"output file {out}: exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UserError(f"output file {out}: no folder {out.parent}")
    model, spec = load_model(options.model, "cpu", torch.float32, options.flavor, options.tokenizer)
    tokenizer = require_tokenizer(spec, options.model)
    name = options.name or options.model.expanduser().resolve().name
    types = write_gguf(
        out,
        model.state_dict(),
        spec.args,
        spec.tokenizer_path,
        (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id),
        options.outtype,
        name,
    )
    counts = {kind: list(types.values()).count(kind) for kind in sorted(set(types.values()))}
    print(
        f"wrote {out}: llama ({spec.args_from}), {len(types)} tensors "
        f"({', '.join(f'{n} {kind}' for kind, n in counts.items())}), {out.stat().st_size / 1e6:,.1f} MB; "
        f"tokenizer of {tokenizer.vocab_size} pieces from {spec.tokenizer_from}",
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point(main)
