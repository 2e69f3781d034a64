"""Chat templates: the Jinja text of each (the one place it is kept), and a conversation into token
ids with, per id, whether training learns it.

The Jinja text is what an export writes into tokenizer_config.json as `chat_template`, so that
`tokenizer.apply_chat_template(messages)` in transformers gives exactly the ids `encode_chat` gives.
To get there, encode_chat renders the template as transformers does (a sandboxed Jinja environment
with trim_blocks and lstrip_blocks) and tokenizes the text as the exported tokenizer does when it
meets the text of a special token (`<s>`, `</s>`, `<unk>`): the text is cut at each, the token's id
stands for it, and each piece between is encoded alone, with its own dummy-prefix space (which is why
Llama-style tokenizers give "▁" "\\n" after every `</s>`; TinyLlama-Chat's own tokenizer does too).

What is trained: the content of each assistant turn and the end-of-turn token (`</s>`) that closes
it; never system or user text, nor the template's role headers or the newlines between turns. The
ids of a turn are found by rendering the conversation up to it twice: with the generation prompt
(everything before the answer) and with the answer; the answer's ids are what the second adds to the
first, up to and including its last end-of-turn token.
"""

from functools import lru_cache
from typing import TYPE_CHECKING

from tinytitan.errors import UserError

if TYPE_CHECKING:
    from tinytitan.data.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")

# TinyLlama-Chat-v1.0's tokenizer_config.json template (Zephyr's), with the bos token first: its
# usage (`pipe(tokenizer.apply_chat_template(..., tokenize=False))`) tokenizes the text with <s> in
# front, and every packed conversation must start with <s> for document masking to see it.
_TINYLLAMA = (
    "{{ bos_token }}"
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}"
)

DEFAULT_TEMPLATE = "tinyllama"
TEMPLATES: dict[str, str] = {"tinyllama": _TINYLLAMA}


def template_text(name: str) -> str:
    if name not in TEMPLATES:
        raise UserError(f"chat template {name!r}: expected one of {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


@lru_cache(maxsize=8)
def _compiled(text: str):
    """The template compiled as transformers compiles it (its `_compile_jinja_template`)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise UserError(f"chat template: {message}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(text)


def render(tokenizer: "Tokenizer", messages: list[dict], template: str, add_generation_prompt: bool = False) -> str:
    """The conversation as text, as transformers' apply_chat_template(..., tokenize=False) renders it."""
    return _compiled(template_text(template)).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=tokenizer.piece(tokenizer.bos_id),
        eos_token=tokenizer.piece(tokenizer.eos_id),
    )


def encode_rendered(tokenizer: "Tokenizer", text: str) -> list[int]:
    """Rendered text into ids as the exported Hugging Face tokenizer does: the text of a special token
    is that token, and the pieces between are encoded each on its own (see the top)."""
    specials = tokenizer.special_pieces
    ids, start = [], 0
    while start < len(text):
        found = [(text.find(piece, start), piece) for piece in specials]
        found = [(at, -len(piece), piece) for at, piece in found if at >= 0]
        if not found:
            break
        at, _, piece = min(found)  # the first one, the longest at a tie
        ids += tokenizer.encode(text[start:at]) if at > start else []
        ids.append(specials[piece])
        start = at + len(piece)
    return ids + (tokenizer.encode(text[start:]) if start < len(text) else [])


def encode_chat(
    tokenizer: "Tokenizer", messages: list[dict], template: str = DEFAULT_TEMPLATE, add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """The conversation's token ids, and per id whether it is trained on: each assistant turn's
    content and its end-of-turn token. Raises ValueError where the template and tokenizer do not
    let an answer's ids be told apart from what comes before it."""
    ids = encode_rendered(tokenizer, render(tokenizer, messages, template, add_generation_prompt))
    trained = [False] * len(ids)
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            start, end, through = _answer(tokenizer, messages[: index + 1], template)
            if ids[:end] != through[:end]:
                raise ValueError(f"chat template {template!r}: turn {index} renders otherwise inside the conversation")
            trained[start:end] = [True] * (end - start)
    return ids, trained


def _answer(tokenizer: "Tokenizer", messages: list[dict], template: str) -> tuple[int, int, list[int]]:
    """Where the last message (an assistant turn) lies in the ids of the conversation up to it (from
    after its prompt to its last end-of-turn token, included), and those ids."""
    prompt = encode_rendered(tokenizer, render(tokenizer, messages[:-1], template, add_generation_prompt=True))
    through = encode_rendered(tokenizer, render(tokenizer, messages, template))
    if through[: len(prompt)] != prompt:
        raise ValueError(
            f"chat template {template!r}: the ids of an answer cannot be told from its prompt's "
            "(the prompt's last token merges with the answer's first)"
        )
    ends = [i for i in range(len(prompt), len(through)) if through[i] == tokenizer.eos_id]
    if not ends:
        raise ValueError(f"chat template {template!r}: an assistant turn ends without the end-of-turn token")
    return len(prompt), ends[-1] + 1, through
