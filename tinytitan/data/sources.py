"""Data sources of a run: prepared folders mixed by weight into one global stream.

Each source is a folder written by scripts/prepare_data.py (or a source of the built-in corpus):
token shards per split and a manifest naming the tokenizer. All sources of a run must have been
tokenized by the same tokenizer, and it must fit the model's vocabulary.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

from tinytitan.config import Data
from tinytitan.config.schedules import schedule_value
from tinytitan.data.builtin_chat import prepare_builtin_chat
from tinytitan.data.builtin_corpus import prepare_builtin_corpus
from tinytitan.data.conversations import ConversationStream
from tinytitan.data.manifest import read_manifest, split_shards
from tinytitan.data.shards import read_header
from tinytitan.data.streams import MixedStream, SampleStream, Stream, SyntheticStream
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    weight: float


def check_sources(sources: list[Source], vocab_size: int, tokenizer: Tokenizer | None = None) -> None:
    """Every source was made by one tokenizer (`tokenizer`'s, when given) that fits `vocab_size`."""
    expected = tokenizer.checksum() if tokenizer else None
    for source in sources:
        record = read_manifest(source.path)["tokenizer"]
        expected = expected or record["sha256"]
        if record["sha256"] != expected:
            what = f"the tokenizer {tokenizer.path}" if tokenizer else f"source {sources[0].name!r}'s"
            raise UserError(
                f"data source {source.name!r} ({source.path}): tokenized with sha256 {record['sha256'][:12]}…: "
                f"expected {what} ({expected[:12]}…)"
            )
        _check_fits(source, record, vocab_size, tokenizer)
        if not split_shards(source.path, "train"):
            raise UserError(f"data source {source.name!r} ({source.path}): no train split in its manifest")
        _check_shard_headers(source, vocab_size)


def _check_shard_headers(source: Source, vocab_size: int) -> None:
    """Every shard is there, whole, and holds ids of a vocabulary the model has: its header says
    which (64 bytes read per shard). A shard from another tokenizer would otherwise train on ids past
    the embedding's rows, silently on some devices, or fail deep inside a step."""
    for split in read_manifest(source.path)["splits"]:
        for path in split_shards(source.path, split):
            header = read_header(path)
            if header.vocab_size > vocab_size:
                raise UserError(
                    f"data source {source.name!r}: shard {path}: ids of a {header.vocab_size}-piece vocabulary "
                    f"(its header): expected at most the model's vocab_size {vocab_size}"
                )


def _check_fits(source: Source, record: dict, vocab_size: int, tokenizer: Tokenizer | None) -> None:
    """The source's tokenizer fits the model: the tokenizer itself decides when it is at hand (it
    made the source, as its checksum says), else the size the manifest records."""
    if tokenizer is not None:
        try:
            tokenizer.check_fits(vocab_size)
        except UserError as error:
            raise UserError(f"data source {source.name!r} ({source.path}): {error}") from None
    elif record["vocab_size"] > vocab_size:
        raise UserError(
            f"data source {source.name!r} ({source.path}): tokenizer of {record['vocab_size']} pieces: "
            f"expected at most the model's vocab_size {vocab_size}"
        )


def training_stream(
    sources: list[Source], seq_len: int, seed: int, samples_per_step: int = 1, packing: bool = True
) -> MixedStream:
    """The sources mixed by weight (constant or scheduled over steps of `samples_per_step` samples)."""
    streams = [
        _split_stream(s, "train", seq_len, seed=(seed, index), packing=packing) for index, s in enumerate(sources)
    ]
    names, weights = [s.name for s in sources], [s.weight for s in sources]
    stream = MixedStream(streams, weights, seed=(seed, len(sources)), names=names, samples_per_step=samples_per_step)
    stream.identities = {s.name: _identity(s) for s in sources}
    return stream


def _identity(source: Source) -> str:
    """What a source's train split is, whatever its path: its size and tokenizer."""
    manifest = read_manifest(source.path)
    tokens, tokenizer = manifest["splits"]["train"]["tokens"], manifest["tokenizer"]["sha256"][:12]
    return f"{tokens} train tokens, tokenizer {tokenizer}"


def _split_stream(source: Source, split: str, seq_len: int, seed: tuple, packing: bool, shuffle: bool = True):
    """A SampleStream of a split, or a ConversationStream when the source holds conversations."""
    shards = split_shards(source.path, split)
    manifest = read_manifest(source.path)
    if not manifest["settings"].get("chat_template"):
        return SampleStream(shards, seq_len, seed=seed, shuffle=shuffle)
    ids = manifest["tokenizer"]
    return ConversationStream(shards, seq_len, seed, ids["bos_id"], ids["eos_id"], packing=packing, shuffle=shuffle)


def validation_streams(sources: list[Source], seq_len: int, packing: bool = True) -> dict[str, SampleStream]:
    """Each source's validation split in its stored order. Sources without one, or with less than
    one sample of it, are left out (and said so)."""
    streams = {}
    for source in sources:
        split = read_manifest(source.path)["splits"].get("validation")
        if not split or split["tokens"] <= seq_len:
            tokens = split["tokens"] if split else 0
            print(
                f"data source {source.name!r}: no validation "
                f"({tokens} validation tokens, a sample needs {seq_len + 1})",
                flush=True,
            )
            continue
        streams[source.name] = _split_stream(source, "validation", seq_len, seed=(), packing=packing, shuffle=False)
    return streams


def resolve_sources(data: Data) -> tuple[list[Source], Tokenizer | None]:
    """The sources to mix, and the tokenizer they must have been made with (if one is named)."""
    if data.dataset == "builtin_chat":
        folder, tokenizer_path = prepare_builtin_chat(data.cache_dir, data.tokenizer_path or None)
        return [Source("chat", folder, 1.0)], Tokenizer(tokenizer_path)
    if data.dataset == "builtin":
        corpus = prepare_builtin_corpus(data.cache_dir, data.tokenizer_path or None)
        sources = [Source(name, path, corpus.weights[name]) for name, path in corpus.sources.items()]
        return sources, Tokenizer(corpus.tokenizer_path)
    sources = [Source(s.name, Path(s.path).expanduser(), s.weight) for s in data.sources]
    return sources, Tokenizer(data.tokenizer_path) if data.tokenizer_path else None


def tokenizer_vocab_size(data: Data) -> int | None:
    """The vocabulary of the tokenizer the data was made with (model.vocab_size = 0 takes it): the
    named or built-in tokenizer's, else the largest the sources' manifests record; None for
    synthetic tokens, which have no tokenizer."""
    if data.dataset == "synthetic":
        return None
    sources, tokenizer = resolve_sources(data)
    if tokenizer is not None:
        return tokenizer.vocab_size
    return max(read_manifest(source.path)["tokenizer"]["vocab_size"] for source in sources)


def document_bos_id(data: Data) -> int | None:
    """The token every document of the data starts with, when document masking or per-document
    positions need it (else None). Data prepared without bos (prepare_data.py --no-bos) or synthetic
    tokens have no such token: refused, since their windows cannot be split into documents."""
    if not data.document_masking and data.document_positions == "window":
        return None
    wanted = "data.document_masking = true" if data.document_masking else 'data.document_positions = "per_document"'
    if data.dataset == "synthetic":
        raise UserError(f'{wanted}: data.dataset = "synthetic" has no documents: expected prepared data')
    sources, _ = resolve_sources(data)
    for source in sources:
        manifest = read_manifest(source.path)
        if manifest.get("settings", {}).get("bos") is not True or manifest["tokenizer"].get("bos_id") is None:
            raise UserError(
                f"{wanted}: data source {source.name!r} ({source.path}) was prepared without a bos token "
                "starting each document (its manifest's settings): expected data prepared with bos "
                "(scripts/prepare_data.py without --no-bos)"
            )
    return read_manifest(sources[0].path)["tokenizer"]["bos_id"]


def build_streams(
    data: Data, vocab_size: int, seq_len: int, seed: int, samples_per_step: int = 1
) -> tuple[Stream, dict[str, SampleStream], str]:
    """The global training stream, each source's validation stream, and a few words on them.
    `samples_per_step` (global_batch_tokens / seq_len) places scheduled weights on optimizer steps."""
    if data.dataset == "synthetic":
        stream = SyntheticStream(vocab_size, seq_len, seed=(seed,))
        stream.settings = stream_settings(data.dataset, seq_len, seed, [])
        return stream, {}, f"synthetic tokens over {vocab_size} ids"
    sources, tokenizer = resolve_sources(data)
    check_sources(sources, vocab_size, tokenizer)
    chat_template = sources_chat_template(sources, data.chat_template)
    if chat_template and data.packing and not data.document_masking:
        raise UserError(
            "data.packing = true with conversations: expected data.document_masking = true (with model.attention "
            '= "flex"), else each conversation attends to those packed before it; or data.packing = false'
        )
    stream = training_stream(sources, seq_len, seed, samples_per_step, data.packing)
    stream.settings = stream_settings(data.dataset, seq_len, seed, sources)
    summary = f"sources {describe_mix(sources)}"
    if chat_template:
        stream.settings["data.packing"] = data.packing
        summary += "; " + "; ".join(f"{s.name}: {c.describe()}" for s, c in zip(sources, stream.streams))
    return stream, validation_streams(sources, seq_len, data.packing), summary


def describe_mix(sources: list[Source]) -> str:
    """Each source's share of the weights at step 0, and a note on a weight that follows a schedule."""
    start = [schedule_value(s.weight, 0) for s in sources]
    return ", ".join(
        f"{s.name} {w / sum(start):.1%}"
        + (f" (scheduled to {s.weight[-1][1]:g} at step {s.weight[-1][0]})" if isinstance(s.weight, list) else "")
        for s, w in zip(sources, start)
    )


def sources_chat_template(sources: list[Source], configured: str) -> str:
    """The chat template the sources' conversations were prepared with ("" for plain text): every
    source holds conversations of one template, or none does, and data.chat_template, if set, is it."""
    templates = {s.name: read_manifest(s.path)["settings"].get("chat_template") or "" for s in sources}
    if len(set(templates.values())) > 1:
        listed = ", ".join(f"{name!r} {template or 'plain text'}" for name, template in templates.items())
        raise UserError(f"data sources: {listed}: expected all conversations of one chat template, or all plain text")
    template = next(iter(templates.values()))
    if configured and template != configured:
        raise UserError(
            f"data.chat_template = {configured!r}: the sources were prepared with "
            f"{template or 'no chat template (plain text)'}: expected that (or empty)"
        )
    return template


def with_chat_template(data: Data) -> Data:
    """`data` naming the chat template of its sources, so that the saved config.toml tells an export
    which template to write (empty for plain text and synthetic tokens)."""
    if data.dataset == "synthetic":
        return data
    return replace(data, chat_template=sources_chat_template(resolve_sources(data)[0], data.chat_template))


def stream_settings(dataset: str, seq_len: int, seed: int, sources: list[Source]) -> dict:
    """What sample i of the training stream depends on, by the config key that sets it; the sources
    and their weights are the data plan's (plan.py), which a resume may change. "data.sources" is what
    checkpoints saved before plans recorded (each source's share of constant weights and its train
    split), to compare with them: a source is known by its name and data, not by its path."""
    settings = {"data.dataset": dataset, "training.seq_len": seq_len, "training.seed": seed}
    if not sources:
        return settings
    scheduled = any(isinstance(s.weight, list) for s in sources)  # never what an older checkpoint saved
    weights = [
        json.dumps(s.weight) if scheduled else f"{s.weight / sum(x.weight for x in sources):.6g}" for s in sources
    ]
    described = [f"{s.name} weight {weight} ({_identity(s)})" for s, weight in zip(sources, weights)]
    return settings | {"data.sources": "; ".join(described)}
