"""The built-in conversations: a small finetuning set made offline from Python's bundled
documentation (`pydoc_data.topics`, the built-in corpus's prose), so the debug SFT recipe needs no
download.

Each section of each documentation topic becomes a conversation: a question about its title,
answered by its first paragraphs, then sometimes "Tell me more." answered by the next ones; half of
them start with a system prompt. The wording is drawn from a fixed seed, so the set is the same on
every machine with the same Python. Every tenth conversation is held out for validation. They are
written with the built-in corpus's tokenizer and chat template into one prepared source folder, in
the format of `prepare_data --format chat` (masked shards and a manifest), beside the corpus in the
cache and published the same way (assembled under a temporary name, renamed when complete).
"""

import os
import random
import re
import shutil
import sys
from pathlib import Path

from tinytitan.chat_templates import DEFAULT_TEMPLATE, encode_chat
from tinytitan.data.builtin_corpus import prepare_builtin_corpus, prose_documents
from tinytitan.data.manifest import MANIFEST_NAME, write_manifest
from tinytitan.data.shards import ShardWriter
from tinytitan.data.tokenizer import Tokenizer

CHAT_VERSION = 1
VALIDATION_EVERY = 10
ANSWER_CHARS = 400  # an answer is whole paragraphs up to about this many characters (the first at least)
SYSTEM_PROMPT = "You are a helpful assistant. You answer questions about Python from its documentation."
QUESTIONS = (
    "What is {}?",
    "Explain {} in Python.",
    "Tell me about {}.",
    "How does the Python documentation describe {}?",
    "Can you summarise {} for me?",
)
FOLLOW_UPS = ("Tell me more.", "Go on.", "What else should I know?")
_HEADING = re.compile(r"^(\S[^\n]*)\n([=*\-~^\"])\2{2,}$", re.MULTILINE)


def sections(topic: str) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) of each headed section of a documentation topic."""
    found, headings = [], list(_HEADING.finditer(topic))
    for heading, following in zip(headings, headings[1:] + [None]):
        body = topic[heading.end() : following.start() if following else len(topic)]
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
        if paragraphs:
            found.append((heading.group(1).strip(), paragraphs))
    return found


def _answer(paragraphs: list[str]) -> tuple[str, list[str]]:
    """Whole paragraphs up to about ANSWER_CHARS (at least one), and the paragraphs left."""
    taken = 1
    while taken < len(paragraphs) and len("\n\n".join(paragraphs[: taken + 1])) <= ANSWER_CHARS:
        taken += 1
    return "\n\n".join(paragraphs[:taken]), paragraphs[taken:]


def conversations(seed: int = CHAT_VERSION) -> list[list[dict]]:
    """The conversations, in a fixed order."""
    rng, made = random.Random(seed), []
    for topic in prose_documents():
        for title, paragraphs in sections(topic):
            messages = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
            answer, rest = _answer(paragraphs)
            messages += [
                {"role": "user", "content": rng.choice(QUESTIONS).format(title)},
                {"role": "assistant", "content": answer},
            ]
            if rest and rng.random() < 0.5:
                more, _ = _answer(rest)
                messages += [
                    {"role": "user", "content": rng.choice(FOLLOW_UPS)},
                    {"role": "assistant", "content": more},
                ]
            made.append(messages)
    return made


def _write(folder: Path, tokenizer: Tokenizer) -> None:
    splits: dict[str, list] = {"train": [], "validation": []}
    for index, messages in enumerate(conversations()):
        held_out = index % VALIDATION_EVERY == VALIDATION_EVERY - 1
        splits["validation" if held_out else "train"].append(encode_chat(tokenizer, messages, DEFAULT_TEMPLATE))
    entries = {}
    for split, encoded in splits.items():
        writer = ShardWriter(folder, split, tokenizer.vocab_size)
        for ids, trained in encoded:
            writer.add_document(ids, trained)
        entries[split] = {
            "shards": writer.close(),
            "documents": len(encoded),
            "tokens": sum(len(ids) for ids, _ in encoded),
        }
    settings = {"bos": True, "eos": True, "chat_template": DEFAULT_TEMPLATE}
    write_manifest(folder, tokenizer, entries, settings, origin=f"built-in conversations v{CHAT_VERSION}")


def prepare_builtin_chat(cache_dir: str | Path, tokenizer_path: str | Path | None = None) -> tuple[Path, Path]:
    """(the prepared folder of the built-in conversations, its tokenizer): the built-in corpus's
    tokenizer (trained on it, or the one given), so a model pretrained on the corpus finetunes on them."""
    corpus = prepare_builtin_corpus(cache_dir, tokenizer_path)
    folder = corpus.folder.with_name(f"{corpus.folder.name}-chat-v{CHAT_VERSION}")
    if not (folder / MANIFEST_NAME).is_file():
        print(f"built-in conversations: preparing them once in {folder}", file=sys.stderr, flush=True)
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _write(staging, Tokenizer(corpus.tokenizer_path))
            os.replace(staging, folder)  # publish; fails if another process published first
        except OSError:
            if not (folder / MANIFEST_NAME).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder, corpus.tokenizer_path
