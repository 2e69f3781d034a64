import json

import numpy as np
import pytest

from tinytitan.data import builtin_corpus as corpus_module
from tinytitan.data.builtin_corpus import BUILTIN_VOCAB_SIZE, CODE_SHARE, prepare_builtin_corpus, prose_documents
from tinytitan.data.shards import open_shard
from tinytitan.data.tokenizer import Tokenizer


def source_tokens(corpus, name):
    return np.concatenate([open_shard(path)[1] for path in corpus.shards[name]]).astype(np.int64)


def test_corpus_mixes_prose_and_code_seven_to_three(builtin_corpus):
    prose, code = source_tokens(builtin_corpus, "prose"), source_tokens(builtin_corpus, "code")
    assert len(prose) > 50_000 and len(code) > 10_000
    assert len(code) / (len(prose) + len(code)) == pytest.approx(CODE_SHARE, abs=0.01)
    manifest = builtin_corpus.manifest
    assert manifest["sources"]["prose"]["tokens"] == len(prose) and manifest["sources"]["code"]["tokens"] == len(code)


def test_documents_are_delimited_and_decode_to_the_real_text(builtin_corpus):
    tokenizer = Tokenizer(builtin_corpus.tokenizer_path)
    assert tokenizer.vocab_size == BUILTIN_VOCAB_SIZE
    prose = source_tokens(builtin_corpus, "prose")
    assert prose.max() < tokenizer.vocab_size
    starts = np.flatnonzero(prose == tokenizer.bos_id)
    assert len(starts) == builtin_corpus.manifest["sources"]["prose"]["documents"] == len(prose_documents())
    first_document = prose[1 : np.flatnonzero(prose == tokenizer.eos_id)[0]]
    assert tokenizer.decode(first_document.tolist()) == prose_documents()[0]
    code = tokenizer.decode(source_tokens(builtin_corpus, "code").tolist())
    assert "def " in code and "import " in code


def test_second_use_reuses_the_cache(corpus_cache, builtin_corpus, monkeypatch):
    monkeypatch.setattr(corpus_module, "_build", lambda *a: pytest.fail("rebuilt"))
    again = prepare_builtin_corpus(corpus_cache)
    assert again.folder == builtin_corpus.folder and again.manifest == builtin_corpus.manifest


def test_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def fail_on_code(name, *args):
        if name == "code":
            raise KeyboardInterrupt
        return real_write_source(name, *args)

    real_write_source = corpus_module._write_source
    monkeypatch.setattr(corpus_module, "_write_source", fail_on_code)
    with pytest.raises(KeyboardInterrupt):
        prepare_builtin_corpus(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_given_tokenizer_is_used_and_recorded(tmp_path, builtin_corpus):
    corpus = prepare_builtin_corpus(tmp_path, builtin_corpus.tokenizer_path)
    assert corpus.folder != builtin_corpus.folder  # keyed by the tokenizer's checksum
    manifest = json.loads((corpus.folder / "manifest.json").read_text())
    assert manifest["tokenizer"]["trained_here"] is False
    assert manifest["tokenizer"]["sha256"] == Tokenizer(builtin_corpus.tokenizer_path).checksum()
    assert np.array_equal(source_tokens(corpus, "prose"), source_tokens(builtin_corpus, "prose"))
