#!/usr/bin/env python3
"""Generate text with tinytitan's model from a DCP checkpoint or a Hugging Face Llama folder.

    python scripts/generate.py outputs/debug/checkpoints/step-200 --prompt "def main(" --max-new-tokens 64
    python scripts/generate.py hf/debug --prompt "The list" --temperature 0.8 --top-p 0.95 --seed 1

The model and tokenizer are found as convert_dcp_to_hf.py finds them (run config.toml, files beside
a converted checkpoint, or --flavor / --tokenizer); a Hugging Face folder brings its own config.json
and tokenizer.model. The prompt starts with <s>, as training documents did. Prints the prompt and
its continuation on stdout, and a line of counts on stderr. Greedy when --temperature is 0.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from tinytitan.dtypes import ALIASES, DTYPE_NAMES, torch_dtype
from tinytitan.errors import UserError, run_entry_point
from tinytitan.generation import Sampling, generate
from tinytitan.model_files import load_model, require_tokenizer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, metavar="CKPT_OR_HF_DIR", help="DCP checkpoint or Hugging Face folder")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default: 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); higher: more varied")
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="sample only from the most likely tokens holding this probability (default: 1.0, all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    parser.add_argument("--flavor", help="model flavor, for a checkpoint outside a run folder")
    parser.add_argument("--tokenizer", type=Path, help="sentencepiece tokenizer.model (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument(
        "--dtype",
        choices=(*DTYPE_NAMES, *ALIASES),
        default="float32",
        metavar="{" + ",".join(DTYPE_NAMES) + "}",
        help="weights' dtype (default: float32; bf16, fp16 and fp32 also read)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    if options.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {options.max_new_tokens}: expected 1 or more")
    if not 0 <= options.seed < 2**64:  # what torch.Generator.manual_seed takes
        raise UserError(f"--seed {options.seed}: expected an integer from 0 to 2**64 - 1")
    sampling = Sampling(options.temperature, options.top_p)
    device = torch.device(
        "cuda"
        if options.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if options.device == "auto"
        else options.device
    )
    model, spec = load_model(options.model, device, torch_dtype(options.dtype), options.flavor, options.tokenizer)
    tokenizer = require_tokenizer(spec, options.model)

    prompt = tokenizer.encode(options.prompt, bos=True)
    generator = torch.Generator().manual_seed(options.seed)
    start = time.perf_counter()
    new = generate(model, prompt, options.max_new_tokens, sampling, generator, eos_id=tokenizer.eos_id)
    seconds = time.perf_counter() - start

    print(tokenizer.decode(prompt + new), flush=True)
    ended = "stopped at </s>" if new[-1] == tokenizer.eos_id else f"stopped at {options.max_new_tokens} tokens"
    print(
        f"generated {len(new)} tokens after a prompt of {len(prompt)} in {seconds:.2f}s "
        f"({len(new) / seconds:.1f} tokens/s) on {device}; {ended}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point(main)
