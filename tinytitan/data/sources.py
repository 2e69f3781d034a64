"""Data sources of a run: prepared folders mixed by weight into one global stream.

Each source is a folder written by scripts/prepare_data.py (or a source of the built-in corpus):
token shards per split and a manifest naming the tokenizer. All sources of a run must have been
tokenized by the same tokenizer, and it must fit the model's vocabulary.
"""

from dataclasses import dataclass, replace
from pathlib import Path

from tinytitan.config import Data
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


def training_stream(sources: list[Source], seq_len: int, seed: int, packing: bool = True) -> MixedStream:
    streams = [
        _split_stream(s, "train", seq_len, seed=(seed, index), packing=packing) for index, s in enumerate(sources)
    ]
    return MixedStream(streams, [s.weight for s in sources], seed=(seed, len(sources)), names=[s.name for s in sources])


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


def build_streams(data: Data, vocab_size: int, seq_len: int, seed: int) -> tuple[Stream, dict[str, SampleStream], str]:
    """The global training stream, each source's validation stream, and a few words on them."""
    if data.dataset == "synthetic":
        stream = SyntheticStream(vocab_size, seq_len, seed=(seed,))
        stream.settings = stream_settings(data.dataset, seq_len, seed, [])
        return stream, {}, f"synthetic tokens over {vocab_size} ids"
    sources, tokenizer = resolve_sources(data)
    check_sources(sources, vocab_size, tokenizer)
    chat_template = sources_chat_template(sources, data.chat_template)
    mix = ", ".join(f"{s.name} {s.weight / sum(x.weight for x in sources):.1%}" for s in sources)
    stream = training_stream(sources, seq_len, seed, data.packing)
    stream.settings = stream_settings(data.dataset, seq_len, seed, sources)
    if chat_template:
        stream.settings["data.packing"] = data.packing
        mix += "; " + "; ".join(f"{s.name}: {c.describe()}" for s, c in zip(sources, stream.streams))
    return stream, validation_streams(sources, seq_len, data.packing), f"sources {mix}"


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
    """What sample i of the training stream depends on, by the config key that sets it. A source is
    known by its name, its share of the weights and its train split's size and tokenizer, not by its
    path: a moved folder holds the same stream, re-prepared data does not."""
    total = sum(s.weight for s in sources)
    described = []
    for s in sources:
        manifest = read_manifest(s.path)
        tokens, tokenizer = manifest["splits"]["train"]["tokens"], manifest["tokenizer"]["sha256"][:12]
        described.append(f"{s.name} weight {s.weight / total:.6g} ({tokens} train tokens, tokenizer {tokenizer})")
    settings = {"data.dataset": dataset, "training.seq_len": seq_len, "training.seed": seed}
    return settings | ({"data.sources": "; ".join(described)} if sources else {})
