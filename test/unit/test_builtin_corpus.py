import json

import numpy as np
import pytest

from tinytitan.data import builtin_corpus as corpus_module
from tinytitan.data.builtin_corpus import BUILTIN_VOCAB_SIZE, WEIGHTS, prepare_builtin_corpus, prose_documents
from tinytitan.data.manifest import read_manifest, split_shards
from tinytitan.data.shards import open_shard
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError


def split_tokens(folder, split):
    return np.concatenate([open_shard(path)[1] for path in split_shards(folder, split)]).astype(np.int64)


def test_corpus_mixes_prose_and_code_seven_to_three(builtin_corpus):
    assert builtin_corpus.weights == WEIGHTS == {"prose": 0.7, "code": 0.3}
    for split in ("train", "validation"):
        prose, code = (split_tokens(builtin_corpus.sources[name], split) for name in ("prose", "code"))
        assert len(code) / (len(prose) + len(code)) == pytest.approx(0.3, abs=0.01)
        assert read_manifest(builtin_corpus.sources["code"])["splits"][split]["tokens"] == len(code)
    assert len(split_tokens(builtin_corpus.sources["prose"], "train")) > 50_000


def test_documents_are_delimited_and_decode_to_the_real_text(builtin_corpus):
    tokenizer = Tokenizer(builtin_corpus.tokenizer_path)
    assert tokenizer.vocab_size == BUILTIN_VOCAB_SIZE
    prose = split_tokens(builtin_corpus.sources["prose"], "train")
    validation = split_tokens(builtin_corpus.sources["prose"], "validation")
    assert prose.max() < tokenizer.vocab_size
    manifest = read_manifest(builtin_corpus.sources["prose"])
    assert np.count_nonzero(prose == tokenizer.bos_id) == manifest["splits"]["train"]["documents"]
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == len(
        prose_documents()
    )
    first_document = prose[1 : np.flatnonzero(prose == tokenizer.eos_id)[0]]
    assert tokenizer.decode(first_document.tolist()) == prose_documents()[0]
    held_out = tokenizer.decode(validation[1 : np.flatnonzero(validation == tokenizer.eos_id)[0]].tolist())
    assert held_out in prose_documents() and held_out not in tokenizer.decode(prose.tolist())
    code = tokenizer.decode(split_tokens(builtin_corpus.sources["code"], "train").tolist())
    assert "def " in code and "import " in code
    assert manifest["tokenizer"]["sha256"] == tokenizer.checksum()


def test_second_use_reuses_the_cache(corpus_cache, builtin_corpus, monkeypatch):
    monkeypatch.setattr(corpus_module, "_build", lambda *a: pytest.fail("rebuilt"))
    assert prepare_builtin_corpus(corpus_cache) == builtin_corpus


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def fail_on_code(folder, *args):
        if folder.name == "code":
            raise KeyboardInterrupt
        return real_write_source(folder, *args)

    real_write_source = corpus_module._write_source
    monkeypatch.setattr(corpus_module, "_write_source", fail_on_code)
    with pytest.raises(KeyboardInterrupt):
        prepare_builtin_corpus(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_given_tokenizer_is_used_and_recorded(tmp_path, builtin_corpus):
    corpus = prepare_builtin_corpus(tmp_path, builtin_corpus.tokenizer_path)
    assert corpus.folder != builtin_corpus.folder  # keyed by the tokenizer's checksum
    assert json.loads((corpus.folder / "corpus.json").read_text())["tokenizer_trained_here"] is False
    assert (
        read_manifest(corpus.sources["prose"])["tokenizer"]["sha256"]
        == Tokenizer(builtin_corpus.tokenizer_path).checksum()
    )
    assert np.array_equal(
        split_tokens(corpus.sources["prose"], "train"), split_tokens(builtin_corpus.sources["prose"], "train")
    )


def test_a_relative_cache_dir_gives_a_corpus_that_reads_from_anywhere(tmp_path, builtin_corpus, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    corpus = prepare_builtin_corpus("relative-cache", builtin_corpus.tokenizer_path)
    for directory in (tmp_path / "work", tmp_path):  # the run's folder, and another working directory
        monkeypatch.chdir(directory)
        for name in WEIGHTS:
            for split in ("train", "validation"):
                folder = tmp_path / "work" / corpus.sources[name]
                assert np.array_equal(split_tokens(folder, split), split_tokens(builtin_corpus.sources[name], split))
    assert prepare_builtin_corpus(tmp_path / "work/relative-cache", builtin_corpus.tokenizer_path).sources


def test_a_corpus_that_does_not_read_back_is_never_marked_complete(tmp_path, builtin_corpus, monkeypatch):
    def manifest_naming_the_staging_folder(folder, tokenizer, splits, **kwargs):
        path = real_write_manifest(folder, tokenizer, splits, **kwargs)  # as the shards are named from the cwd
        manifest = json.loads(path.read_text())
        for name, split in splits.items():
            manifest["splits"][name]["shards"] = [str(shard) for shard in split["shards"]]
        path.write_text(json.dumps(manifest))
        return path

    real_write_manifest = corpus_module.write_manifest
    monkeypatch.setattr(corpus_module, "write_manifest", manifest_naming_the_staging_folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="built-in corpus .*prose/train"):
        prepare_builtin_corpus("cache", builtin_corpus.tokenizer_path)
    assert not list((tmp_path / "cache").glob("*/corpus.json")) and not list((tmp_path / "cache").glob("*.tmp-*"))
