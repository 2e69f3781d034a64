#!/usr/bin/env python3
"""Generate text with tinytitan's model from a DCP checkpoint or a Hugging Face Llama folder.

    python scripts/generate.py outputs/debug/checkpoints/step-200 --prompt "def main(" --max-new-tokens 64
    python scripts/generate.py hf/debug --prompt "The list" --temperature 0.8 --top-p 0.95 --seed 1
    python scripts/generate.py hf/debug --prompt "The list" --prompt "def main("      # a batch of two
    python scripts/generate.py runs/big/checkpoints/step-900 --prompt "The list" --draft runs/small/checkpoints/step-900

The model and tokenizer are found as convert_dcp_to_hf.py finds them (run config.toml, files beside
a converted checkpoint, or --flavor / --tokenizer); a Hugging Face folder brings its own config.json
and tokenizer.model. The prompt starts with <s>, as training documents did. Prints the prompt and
its continuation on stdout (several prompts: decoded together, the continuations separated by
blank lines), and a line of counts on stderr. Greedy when --temperature is 0.

With --draft, a small model with the same tokenizer proposes --draft-tokens tokens that the model
checks in one forward (speculative decoding: the same text greedy, the same distribution
sampling); stderr then says the acceptance rate and the tokens/s of plain decoding beside it.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError, run_entry_point
from tinytitan.generation import generate, generate_batch, generate_speculative
from tinytitan.inference_options import add_model_options, add_sampling_options, load_from, sampling_from
from tinytitan.model_files import load_model, require_tokenizer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    parser.add_argument(
        "--prompt", required=True, action="append", help="text to continue (repeat it for a batch of prompts)"
    )
    add_sampling_options(parser, temperature=0.0, top_p=1.0, max_new_tokens=64)
    parser.add_argument("--draft", type=Path, metavar="CKPT_OR_HF_DIR", help="draft model: speculative decoding")
    parser.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per step (default: 4)")
    parser.add_argument("--draft-flavor", help="the draft's model flavor, for a checkpoint outside a run folder")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    sampling = sampling_from(options)
    if options.draft_tokens < 1:
        raise UserError(f"--draft-tokens {options.draft_tokens}: expected 1 or more")
    model, _, tokenizer = load_from(options)
    prompts = [tokenizer.encode(text, bos=True) for text in options.prompt]
    if options.draft:
        weight = model.tok_embeddings.weight
        draft, draft_spec = load_model(options.draft, weight.device, weight.dtype, options.draft_flavor)
        require_same_tokenizer(tokenizer, require_tokenizer(draft_spec, options.draft), options.draft)
        speculate(model, draft, tokenizer, prompts, options, sampling)
        return

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(options.seed)
    new = generate_batch(model, prompts, options.max_new_tokens, sampling, generator, eos_id=tokenizer.eos_id)
    seconds = time.perf_counter() - start
    print(*(tokenizer.decode(prompt + row) for prompt, row in zip(prompts, new)), sep="\n\n", flush=True)
    ended = sum(row[-1] == tokenizer.eos_id for row in new)
    print(
        f"generated {sum(map(len, new))} tokens after {len(prompts)} prompt(s) of {sum(map(len, prompts))} tokens "
        f"in {seconds:.2f}s ({sum(map(len, new)) / seconds:.1f} tokens/s) on {model.tok_embeddings.weight.device}; "
        f"{ended} of {len(new)} stopped at </s>, the others at {options.max_new_tokens} tokens",
        file=sys.stderr,
        flush=True,
    )


def require_same_tokenizer(tokenizer: Tokenizer, draft_tokenizer: Tokenizer, draft_path: Path) -> None:
    if draft_tokenizer.checksum() != tokenizer.checksum():
        raise UserError(
            f"--draft {draft_path}: its tokenizer {draft_tokenizer.path} is not the model's {tokenizer.path} "
            "(other contents): expected a draft trained with the same tokenizer"
        )


def speculate(model, draft, tokenizer: Tokenizer, prompts, options: argparse.Namespace, sampling) -> None:
    """Each prompt decoded speculatively, then plainly, timed side by side."""
    spent = {"speculative": 0.0, "plain": 0.0}
    made = {"speculative": 0, "plain": 0}
    proposed = accepted = 0
    texts = []
    for prompt in prompts:
        generator = torch.Generator().manual_seed(options.seed)
        start = time.perf_counter()
        result = generate_speculative(
            model, draft, prompt, options.max_new_tokens, options.draft_tokens, sampling, generator, tokenizer.eos_id
        )
        spent["speculative"] += time.perf_counter() - start
        start = time.perf_counter()
        plain = generate(model, prompt, options.max_new_tokens, sampling, generator, eos_id=tokenizer.eos_id)
        spent["plain"] += time.perf_counter() - start
        made["speculative"] += len(result.tokens)
        made["plain"] += len(plain)
        proposed, accepted = proposed + result.proposed, accepted + result.accepted
        texts.append(tokenizer.decode(prompt + result.tokens))
    print(*texts, sep="\n\n", flush=True)
    rate = {name: made[name] / spent[name] for name in spent}
    print(
        f"speculative: {made['speculative']} tokens in {spent['speculative']:.2f}s "
        f"({rate['speculative']:.1f} tokens/s), "
        f"draft of {options.draft_tokens} tokens accepted {accepted} of {proposed} "
        f"({accepted / max(proposed, 1):.1%}); plain decoding: {made['plain']} tokens in {spent['plain']:.2f}s "
        f"({rate['plain']:.1f} tokens/s); speedup {rate['speculative'] / rate['plain']:.2f}x",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    run_entry_point(main)
