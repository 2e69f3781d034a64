"""The built-in corpus: real text that ships with Python, so the debug run needs no download.

Prose is Python's bundled documentation (`pydoc_data.topics`), code is the standard library's own
sources, mixed 7:3 by tokens like SlimPajama:StarCoderData (and sampled 7:3 by weight). First use
trains a small sentencepiece BPE tokenizer on it (unless one is given), tokenizes every document as
<s> tokens </s>, and writes two prepared source folders, `prose/` and `code/`, in the same format
as scripts/prepare_data.py (shards and a manifest, with a train and a validation split). The whole
folder is assembled under a temporary name and renamed, and `corpus.json` inside it marks it
complete, so an interrupted build leaves nothing that looks finished; later runs reuse it.
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

from tinytitan.data.manifest import read_manifest, write_manifest
from tinytitan.data.shards import ShardWriter, read_header
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.progress import Progress

CORPUS_VERSION = 2
BUILTIN_VOCAB_SIZE = 4096
WEIGHTS = {"prose": 0.7, "code": 0.3}  # the mix, by tokens in the corpus and by samples in training
VALIDATION_EVERY = 10  # every 10th prose document is held out for validation
# Standard-library folders that hold tests, generated tables or data rather than typical code.
_SKIPPED_FOLDERS = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "lib2to3",
    "ensurepip",
    "turtledemo",
    "pydoc_data",
    "encodings",
    "__pycache__",
    "__phello__",
}
_MAX_CODE_FILE_BYTES = 200_000


@dataclass(frozen=True)
class BuiltinCorpus:
    folder: Path
    tokenizer_path: Path
    sources: dict[str, Path]  # source name -> its prepared folder (shards and manifest.json)
    weights: dict[str, float]


def prose_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def is_held_out(index: int) -> bool:
    """Whether the prose document at `index` belongs to the validation split."""
    return index % VALIDATION_EVERY == VALIDATION_EVERY - 1


def validation_prose_documents() -> list[str]:
    """The prose documents training never sees (the built-in evaluation task is made of them)."""
    return [document for index, document in enumerate(prose_documents()) if is_held_out(index)]


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


def train_tokenizer(documents: list[str], model_path: Path) -> None:
    """A Llama-style BPE: byte fallback, digits split, whitespace kept as is (code indentation)."""
    lines = [line for document in documents for line in document.split("\n") if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=BUILTIN_VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        character_coverage=0.9999,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        max_sentence_length=16384,
        num_threads=2,
        minloglevel=2,
    )
    model_path.write_bytes(model.getvalue())


def _encode_within(
    name: str, documents: list[str], tokenizer: Tokenizer, budget: int | None
) -> tuple[list[list[int]], list[str]]:
    """<s> tokens </s> of the documents that fit in `budget` tokens (all when None), and the rest."""
    progress = Progress(f"built-in corpus: tokenizing {name}", total=len(documents), unit="documents read")
    kept, rest, tokens = [], [], 0
    for document in documents:
        ids = tokenizer.encode(document, bos=True, eos=True)
        if budget is not None and tokens + len(ids) > budget:
            rest.append(document)  # would overshoot the mix; a smaller one may still fit
            progress.update(1)
            continue
        kept.append(ids)
        tokens += len(ids)
        progress.update(1, tokens_kept=len(ids))
    progress.close()
    return kept, rest


def _write_source(folder: Path, tokenizer: Tokenizer, splits: dict[str, list[list[int]]]) -> dict[str, int]:
    """One prepared source folder: shards per split and its manifest; returns tokens per split."""
    entries = {}
    for split, documents in splits.items():
        writer = ShardWriter(folder, split, tokenizer.vocab_size)
        for ids in documents:
            writer.add_document(ids)
        entries[split] = {"shards": writer.close(), "documents": len(documents), "tokens": sum(map(len, documents))}
    write_manifest(folder, tokenizer, entries, settings={"bos": True, "eos": True}, origin="built-in corpus")
    return {split: entry["tokens"] for split, entry in entries.items()}


def corpus_folder(cache_dir: str | Path, tokenizer_path: str | Path | None = None) -> Path:
    """Where the corpus is (or will be) prepared: keyed by the format, the Python whose sources it
    holds, and the tokenizer (its checksum, or "own" for the one trained here)."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    tokenizer = "own" if tokenizer_path is None else Tokenizer(tokenizer_path).checksum()[:12]
    return Path(cache_dir).expanduser() / f"builtin-v{CORPUS_VERSION}-{python}-tok-{tokenizer}"


def _tokenizer_for(folder: Path, prose: list[str], code: list[str], tokenizer_path: Path | None) -> Tokenizer:
    model_path = folder / "tokenizer.model"
    if tokenizer_path is not None:
        shutil.copyfile(tokenizer_path, model_path)
        return Tokenizer(model_path)
    # Train on the prose and about as much code as the mix will hold (3/7 of the prose's size).
    code_sample, size, budget = [], 0, sum(map(len, prose)) * WEIGHTS["code"] / WEIGHTS["prose"]
    for document in code:
        if size >= budget:
            break
        code_sample.append(document)
        size += len(document)
    print(f"built-in corpus: training a {BUILTIN_VOCAB_SIZE}-piece BPE tokenizer", file=sys.stderr, flush=True)
    train_tokenizer(prose + code_sample, model_path)
    return Tokenizer(model_path)


def _build(folder: Path, tokenizer_path: Path | None) -> None:
    prose, code = prose_documents(), code_documents()
    tokenizer = _tokenizer_for(folder, prose, code, tokenizer_path)
    held_out = [is_held_out(i) for i in range(len(prose))]
    prose_train, _ = _encode_within("prose", [d for d, out in zip(prose, held_out) if not out], tokenizer, None)
    prose_validation, _ = _encode_within(
        "prose (validation)", [d for d, out in zip(prose, held_out) if out], tokenizer, None
    )
    tokens = _write_source(folder / "prose", tokenizer, {"train": prose_train, "validation": prose_validation})
    code_share = WEIGHTS["code"] / WEIGHTS["prose"]
    code_train, unused = _encode_within("code", code, tokenizer, round(tokens["train"] * code_share))
    code_validation, _ = _encode_within(
        "code (validation)", unused, tokenizer, round(tokens["validation"] * code_share)
    )
    _write_source(folder / "code", tokenizer, {"train": code_train, "validation": code_validation})
    _read_back(folder)  # before corpus.json: a folder marked complete is one that training can read
    record = {
        "corpus_version": CORPUS_VERSION,
        "python": sys.version.split()[0],
        "weights": WEIGHTS,
        "tokenizer_trained_here": tokenizer_path is None,
    }
    (folder / "corpus.json").write_text(json.dumps(record, indent=2) + "\n")


def _read_back(folder: Path) -> None:
    """Every source reads back from inside `folder`, by the shard paths its manifest lists (relative
    to the source, so they survive the rename that publishes it): each shard whole, and together the
    tokens the manifest promises."""
    for name in WEIGHTS:
        source = (folder / name).resolve()
        for split, entry in read_manifest(source)["splits"].items():
            try:
                tokens = sum(read_header(source / shard).num_tokens for shard in entry["shards"])
            except UserError as error:
                tokens = f"not all: {error}"
            if tokens != entry["tokens"]:
                raise UserError(
                    f"built-in corpus {folder}: {name}/{split} does not read back as written "
                    f"(expected {entry['tokens']} tokens, read {tokens})"
                )


def prepare_builtin_corpus(cache_dir: str | Path, tokenizer_path: str | Path | None = None) -> BuiltinCorpus:
    """The built-in corpus from the cache, built there first if needed (seconds, progress shown)."""
    tokenizer_path = Path(tokenizer_path).expanduser() if tokenizer_path else None
    folder = corpus_folder(cache_dir, tokenizer_path)
    if not (folder / "corpus.json").is_file():
        print(f"built-in corpus: preparing it once in {folder}", file=sys.stderr, flush=True)
        # Not files.staged_folder, which replaces a published folder: here the first process to
        # publish wins, and the others (ranks, or runs started together) use its corpus as it is.
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _build(staging, tokenizer_path)
            os.replace(staging, folder)  # publish; fails if another process published first
        except OSError:
            if not (folder / "corpus.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    record = json.loads((folder / "corpus.json").read_text())
    return BuiltinCorpus(
        folder, folder / "tokenizer.model", {name: folder / name for name in record["weights"]}, record["weights"]
    )
