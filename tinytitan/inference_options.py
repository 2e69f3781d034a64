"""The command-line options that the scripts using a model share (generate.py, chat.py,
chat_web.py): which model and tokenizer, on which device in which dtype, and how to sample; and
the model they name, loaded."""

import argparse
from pathlib import Path

import torch

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.dtypes import ALIASES, DTYPE_NAMES, torch_dtype
from tinytitan.errors import UserError
from tinytitan.generation import Sampling
from tinytitan.model_files import ModelSpec, load_model, require_tokenizer
from tinytitan.models.llama import Transformer


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="CKPT_OR_HF_DIR", help="DCP checkpoint or Hugging Face folder")
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


def add_sampling_options(parser: argparse.ArgumentParser, temperature: float, top_p: float, max_new_tokens: int):
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=max_new_tokens,
        help=f"tokens to generate at most (default: {max_new_tokens})",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0: greedy; higher: more varied (default: {temperature})",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=top_p,
        help=f"sample only from the most likely tokens holding this probability (default: {top_p}; 1: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")


def sampling_from(options: argparse.Namespace) -> Sampling:
    """The sampling options, checked (one line for each mistake)."""
    if options.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {options.max_new_tokens}: expected 1 or more")
    if not 0 <= options.seed < 2**64:  # what torch.Generator.manual_seed takes
        raise UserError(f"--seed {options.seed}: expected an integer from 0 to 2**64 - 1")
    return Sampling(options.temperature, options.top_p)


def device_from(options: argparse.Namespace) -> torch.device:
    if options.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(options.device)


def load_from(options: argparse.Namespace) -> tuple[Transformer, ModelSpec, Tokenizer]:
    """The model the options name, with what it is and its tokenizer."""
    model, spec = load_model(
        options.model, device_from(options), torch_dtype(options.dtype), options.flavor, options.tokenizer
    )
    return model, spec, require_tokenizer(spec, options.model)
