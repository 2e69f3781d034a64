#!/usr/bin/env python3
"""Import a Hugging Face Llama folder (e.g. a TinyLlama-1.1B release) as a model-only checkpoint.

    python scripts/convert_hf_to_dcp.py TinyLlama-1.1B-intermediate-step-1431k-3T checkpoints/tinyllama
    ./run_train.sh --checkpoint.initial_load_path=checkpoints/tinyllama ...

HF_DIR holds config.json and the weights: model.safetensors, pytorch_model.bin, or either sharded
with its index. The config must describe a LlamaForCausalLM (or a MistralForCausalLM without a
sliding window) of any shape: heads, kv heads, head_dim, tied embeddings, rope_theta and RoPE
scaling (linear, llama3); what the model does not implement (biases, another activation, a sliding
window, dynamic RoPE) is refused in one line naming the field. The model arguments derived from it
are saved in OUT_DIR/model_args.json: training started from OUT_DIR with no model.flavor takes its
shape from them, as generate.py and convert_dcp_to_hf.py do. The tensors keep their dtype.
OUT_DIR is a Distributed Checkpoint folder holding only the model, plus model_args.json and the
tokenizer.model of HF_DIR if it has one, and manifest.json (each file's size and CRC-32, verified
by every reader); it is written under a temporary name and renamed when complete; an existing OUT_DIR is refused unless
--overwrite, which replaces only an earlier import (a folder with .metadata and nothing but the
files listed above) or an empty folder.
"""

import argparse
import shutil
from pathlib import Path

from tinytitan import dcp_reader
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.dtypes import dtype_name
from tinytitan.errors import run_entry_point
from tinytitan.files import check_output_folder, staged_folder
from tinytitan.model_files import (
    DCP_IMPORT_FILES,
    MODEL_ARGS_FILE,
    TOKENIZER_FILE,
    matching_flavor,
    read_hf_model,
    require_replaceable,
    write_model_args_file,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hf_dir", type=Path, metavar="HF_DIR", help="Hugging Face LlamaForCausalLM folder")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="model-only DCP checkpoint to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it is an earlier import")
    return parser.parse_args(argv)


def checked_tokenizer(hf_dir: Path, vocab_size: int) -> Path | None:
    """The folder's tokenizer.model, if it has one, checked to fit the model's vocabulary."""
    path = hf_dir / TOKENIZER_FILE
    if not path.is_file():
        return None
    Tokenizer(path).check_fits(vocab_size, str(hf_dir / "config.json"))
    return path


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    hf_dir, out = options.hf_dir.expanduser(), options.out_dir.expanduser()
    check_output_folder(out, options.overwrite, hf_dir)
    require_replaceable(out, DCP_IMPORT_FILES, "convert_hf_to_dcp.py")
    args, tensors = read_hf_model(hf_dir)
    flavor = matching_flavor(args)
    tokenizer = checked_tokenizer(hf_dir, args.vocab_size)
    with staged_folder(out) as staging:
        dcp_reader.save_model(tensors, staging)
        write_model_args_file(staging, args, flavor)
        if tokenizer:
            shutil.copyfile(tokenizer, staging / TOKENIZER_FILE)
        dcp_reader.seal(staging)  # last: the manifest lists every file above

    parameters = sum(tensor.numel() for tensor in tensors.values())
    dtypes = "/".join(sorted({dtype_name(t.dtype) for t in tensors.values()}))
    shape = (
        f"the config matches flavor {flavor!r} (--model.flavor={flavor} names it)"
        if flavor
        else f"the config matches no flavor: model arguments derived from it ({args})"
    )
    model = (
        f"{shape}, saved in {out / MODEL_ARGS_FILE}: start training from it with "
        f"--checkpoint.initial_load_path={out} and no model.flavor (the shape is the checkpoint's)"
    )
    tokenizer_note = (
        "tokenizer.model copied"
        if tokenizer
        else f"no tokenizer.model in {hf_dir}: pass --tokenizer to the other scripts"
    )
    print(f"wrote {out}: {parameters:,} parameters in {dtypes}; {model}; {tokenizer_note}", flush=True)


if __name__ == "__main__":
    run_entry_point(main)
