"""A chat with a model: the conversation so far, rendered with its chat template, answered token by
token until the end of the turn. scripts/chat.py (a terminal) and scripts/chat_web.py (a web page)
both talk through this module.

A model finetuned on conversations answers after the template's generation prompt and ends its
turn with `</s>`. A base model has no template: the turns' texts, one per line after `<s>`, are
continued as plain text, up to `</s>` or the token limit. Each answer is streamed as text pieces;
a character whose bytes are split over several tokens (byte fallback) is shown once complete.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from tinytitan.chat_templates import TEMPLATES, encode_chat
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.generation import Sampling, stream
from tinytitan.model_files import ModelSpec
from tinytitan.models.llama import Transformer

PLAIN = "none"  # --template none: plain continuation, for a base model


def add_chat_options(parser, system_help: str) -> None:
    """The options both chat scripts take: a system prompt and the template (see choose_template)."""
    parser.add_argument("--system", default="", help=system_help)
    parser.add_argument("--template", default="auto", help=f"chat template name, auto (default) or {PLAIN}")


def choose_template(choice: str, model_path: Path, spec: ModelSpec) -> str | None:
    """The template's name for --template `choice`: a name, "none" (None: plain continuation), or
    "auto": the run's data.chat_template for a checkpoint, the template in an exported folder's
    tokenizer_config.json, else none."""
    if choice == PLAIN:
        return None
    if choice != "auto":
        if choice not in TEMPLATES:
            raise UserError(f"--template {choice!r}: expected auto, {PLAIN} or one of {', '.join(sorted(TEMPLATES))}")
        return choice
    finetuned_on = spec.chat_template  # a checkpoint's run's data.chat_template, where it has one
    if finetuned_on:
        return finetuned_on
    config = Path(model_path) / "tokenizer_config.json"
    text = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    return next((name for name, template in TEMPLATES.items() if template == text), None)


def prompt_ids(tokenizer: Tokenizer, messages: list[dict], template: str | None) -> list[int]:
    """The ids the model continues: the conversation with the template's generation prompt, or,
    without a template, the turns' texts one per line after <s>."""
    if template:
        return encode_chat(tokenizer, messages, template, add_generation_prompt=True)[0]
    return tokenizer.encode("\n".join(message["content"] for message in messages), bos=True)


def stream_reply(
    model: Transformer,
    tokenizer: Tokenizer,
    messages: list[dict],
    template: str | None,
    sampling: Sampling,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """The answer to the conversation `messages` (its last turn the user's), as pieces of text."""
    prompt = prompt_ids(tokenizer, messages, template)
    room = min(max_new_tokens, model.args.max_seq_len - len(prompt))
    if room < 1:
        raise UserError(
            f"the conversation is {len(prompt)} tokens, the model's max_seq_len {model.args.max_seq_len}: "
            "no room for an answer; start a new conversation"
        )
    new, shown = [], ""
    for (token,) in stream(model, [prompt], room, sampling, generator, tokenizer.eos_id):
        if token == tokenizer.eos_id:  # the end of the turn: not part of the answer's text
            break
        new.append(token)
        text = tokenizer.decode(new)
        if not text.endswith("\ufffd") and text.startswith(shown):  # a character's bytes all here
            yield text[len(shown) :]
            shown = text
    text = tokenizer.decode(new)
    if text != shown:
        yield text[len(shown) :] if text.startswith(shown) else text


class ChatSession:
    """A conversation in a terminal: the history, with an optional system prompt first."""

    def __init__(self, model, tokenizer, template, sampling, max_new_tokens, seed=0, system=""):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.sampling, self.max_new_tokens = sampling, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.messages = [{"role": "system", "content": system}] if system else []

    def ask(self, text: str) -> Iterator[str]:
        """The answer to `text`, streamed; the turn and its answer then join the history."""
        self.messages.append({"role": "user", "content": text})
        pieces = []
        try:
            for piece in stream_reply(
                self.model,
                self.tokenizer,
                self.messages,
                self.template,
                self.sampling,
                self.max_new_tokens,
                self.generator,
            ):
                pieces.append(piece)
                yield piece
        except BaseException:
            self.messages.pop()  # an answer cut short (Ctrl-C, no room) leaves no half turn behind
            raise
        self.messages.append({"role": "assistant", "content": "".join(pieces)})
