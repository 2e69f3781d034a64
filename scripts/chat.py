#!/usr/bin/env python3
"""Chat with a model in the terminal: each line you type is a turn; the answer streams back.

    python scripts/chat.py outputs/debug_sft/checkpoints/step-300 --system "You answer briefly."
    python scripts/chat.py hf/tinyllama-chat --temperature 0.7 --top-p 0.9
    printf 'What is a list?\nAnd a tuple?\n' | python scripts/chat.py hf/chat --temperature 0   # scripted

The conversation so far (system prompt first, if any) is rendered with the model's chat template
and the answer ends at the end of the turn (</s>) or after --max-new-tokens. --template auto takes
the template of the run that finetuned a checkpoint, or the one in an exported folder's
tokenizer_config.json; a base model has none and continues the turns as plain text (--template
none forces that). Answers go to stdout, one per turn; the prompt marker and notes to stderr.
Type /reset to start a new conversation; end with Ctrl-D.
"""

import argparse
import sys

from tinytitan.chat import ChatSession, add_chat_options, choose_template
from tinytitan.errors import UserError, run_entry_point
from tinytitan.inference_options import add_model_options, add_sampling_options, load_from, sampling_from


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    add_sampling_options(parser, temperature=0.7, top_p=0.9, max_new_tokens=256)
    add_chat_options(parser, "system prompt at the start of the conversation")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    options = parse_args(argv)
    sampling = sampling_from(options)
    model, spec, tokenizer = load_from(options)
    template = choose_template(options.template, options.model, spec)

    def new_session():
        return ChatSession(model, tokenizer, template, sampling, options.max_new_tokens, options.seed, options.system)

    session = new_session()
    print(f"chat template: {template or 'none (plain continuation)'}; /reset starts over, Ctrl-D ends", file=sys.stderr)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            session = new_session()
            continue
        if not text.strip():
            continue
        try:
            for piece in session.ask(text):
                print(piece, end="", flush=True)
        except UserError as error:  # no room left: say so, keep the session going
            print(f"\nnote: {error}", file=sys.stderr, flush=True)
        print(flush=True)


if __name__ == "__main__":
    run_entry_point(main)
