"""The built-in corpus: real text that ships with Python, so the debug run needs no download.

Prose is Python's bundled documentation (`pydoc_data.topics`), code is the standard library's own
sources, mixed 7:3 by tokens like SlimPajama:StarCoderData. First use trains a small sentencepiece
BPE tokenizer on it (unless one is given), tokenizes every document as <s> tokens </s>, and writes
token shards, one folder per source, into the cache. A manifest written last marks the folder
complete; later runs load it. The folder is assembled under a temporary name and renamed, so an
interrupted build leaves nothing that looks finished.
"""

import io
import json
import os
import random
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from tinytitan.data.shards import ShardWriter
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.progress import Progress

CORPUS_VERSION = 1
BUILTIN_VOCAB_SIZE = 4096
CODE_SHARE = 0.3  # of all tokens: prose:code = 7:3
# Standard-library folders that hold tests, generated tables or data rather than typical code.
_SKIPPED_FOLDERS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "ensurepip", "turtledemo",
                    "pydoc_data", "encodings", "__pycache__", "__phello__"}
_MAX_CODE_FILE_BYTES = 200_000


@dataclass(frozen=True)
class BuiltinCorpus:
    folder: Path
    tokenizer_path: Path
    shards: dict[str, list[Path]]  # source name -> its shard files
    manifest: dict


def prose_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def code_documents() -> list[str]:
    """Standard-library sources in a fixed shuffled order, so the mix spans many modules."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for root, folders, files in os.walk(stdlib):
        folders[:] = sorted(f for f in folders if f not in _SKIPPED_FOLDERS)
        paths += [Path(root) / f for f in sorted(files) if f.endswith(".py")]
    random.Random(CORPUS_VERSION).shuffle(paths)
    documents = []
    for path in paths:
        if path.stat().st_size > _MAX_CODE_FILE_BYTES:
            continue
        try:
            documents.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue  # a few legacy files are not UTF-8; there are hundreds of others
    return documents


def _train_tokenizer(documents: list[str], model_path: Path) -> None:
    """A Llama-style BPE: byte fallback, digits split, whitespace kept as is (code indentation)."""
    lines = [line for document in documents for line in document.split("\n") if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=BUILTIN_VOCAB_SIZE,
        model_type="bpe", byte_fallback=True, split_digits=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=0.9999,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, max_sentence_length=16384, num_threads=2, minloglevel=2,
    )
    model_path.write_bytes(model.getvalue())


def _write_source(name: str, documents: list[str], tokenizer: Tokenizer, folder: Path, token_budget: int | None) -> dict:
    """Tokenize documents into <folder>/<name>/: all of them, or those that fit in `token_budget`."""
    writer = ShardWriter(folder / name, "train", tokenizer.vocab_size)
    progress = Progress(f"built-in corpus: tokenizing {name}", total=len(documents), unit="documents read")
    tokens = documents_written = 0
    for document in documents:
        ids = tokenizer.encode(document, bos=True, eos=True)
        if token_budget is not None and tokens + len(ids) > token_budget:
            progress.update(1)
            continue  # a document that would overshoot the mix; a smaller one may still fit
        writer.add_document(ids)
        tokens += len(ids)
        documents_written += 1
        progress.update(1, tokens_kept=len(ids))
    progress.close()
    paths = writer.close()
    return {"documents": documents_written, "tokens": tokens, "shards": [str(p.relative_to(folder)) for p in paths]}


def _cache_key(tokenizer_path: Path | None) -> str:
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    tokenizer = "own" if tokenizer_path is None else Tokenizer(tokenizer_path).checksum()[:12]
    return f"builtin-v{CORPUS_VERSION}-{python}-tok-{tokenizer}"


def _build(folder: Path, tokenizer_path: Path | None) -> None:
    prose, code = prose_documents(), code_documents()
    model_path = folder / "tokenizer.model"
    if tokenizer_path is None:
        # Train on the prose and about as much code as the mix will hold (3/7 of the prose's size).
        code_sample, size, budget = [], 0, sum(map(len, prose)) * CODE_SHARE / (1 - CODE_SHARE)
        for document in code:
            if size >= budget:
                break
            code_sample.append(document)
            size += len(document)
        print(f"built-in corpus: training a {BUILTIN_VOCAB_SIZE}-piece BPE tokenizer", file=sys.stderr, flush=True)
        _train_tokenizer(prose + code_sample, model_path)
    else:
        shutil.copyfile(tokenizer_path, model_path)
    tokenizer = Tokenizer(model_path)
    sources = {"prose": _write_source("prose", prose, tokenizer, folder, None)}
    code_budget = round(sources["prose"]["tokens"] * CODE_SHARE / (1 - CODE_SHARE))
    sources["code"] = _write_source("code", code, tokenizer, folder, code_budget)
    manifest = {
        "corpus_version": CORPUS_VERSION,
        "python": sys.version.split()[0],
        "tokenizer": {"file": "tokenizer.model", "sha256": tokenizer.checksum(), "vocab_size": tokenizer.vocab_size,
                      "trained_here": tokenizer_path is None},
        "document_format": "<s> tokens </s>",
        "sources": sources,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def prepare_builtin_corpus(cache_dir: str | Path, tokenizer_path: str | Path | None = None) -> BuiltinCorpus:
    """The built-in corpus from the cache, built there first if needed (seconds, progress shown)."""
    tokenizer_path = Path(tokenizer_path).expanduser() if tokenizer_path else None
    folder = Path(cache_dir).expanduser() / _cache_key(tokenizer_path)
    if not (folder / "manifest.json").is_file():
        print(f"built-in corpus: preparing it once in {folder}", file=sys.stderr, flush=True)
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _build(staging, tokenizer_path)
            os.replace(staging, folder)  # publish; fails if another process published first
        except OSError:
            if not (folder / "manifest.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    shards = {name: [folder / shard for shard in source["shards"]] for name, source in manifest["sources"].items()}
    return BuiltinCorpus(folder, folder / "tokenizer.model", shards, manifest)
