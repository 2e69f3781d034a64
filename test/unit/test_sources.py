"""A run's data sources checked at start against the model: every shard's header vocabulary."""

import shutil

import pytest

from tinytitan.data.shards import open_shard, write_shard
from tinytitan.data.sources import Source, check_sources
from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_shard_of_a_larger_vocabulary_than_the_model_is_refused_naming_it(tmp_path, builtin_corpus, split):
    """The manifest says 4096 pieces (its tokenizer's), but one shard's header says 65536: its ids may
    run past the model's embedding."""
    folder = tmp_path / "prose"
    shutil.copytree(builtin_corpus.sources["prose"], folder)
    shard = folder / f"{split}-00000.bin"
    header, tokens = open_shard(shard)
    write_shard(shard, tokens.copy(), header.num_documents, 65536)
    source = Source("prose", folder, 1.0)
    tokenizer = Tokenizer(builtin_corpus.tokenizer_path)
    with pytest.raises(UserError, match=f"data source 'prose': shard {shard}: ids of a 65536-piece vocabulary"):
        check_sources([source], 4096, tokenizer)
    with pytest.raises(UserError, match=f"shard {shard}: .*expected at most the model's vocab_size 4096"):
        check_sources([source], 4096)  # without a tokenizer to go by, as well
    check_sources([source], 65536)  # a model that large takes it


def test_a_missing_shard_is_found_at_start(tmp_path, builtin_corpus):
    folder = tmp_path / "prose"
    shutil.copytree(builtin_corpus.sources["prose"], folder)
    (folder / "validation-00000.bin").unlink()
    with pytest.raises(UserError, match="validation-00000.bin: cannot read it"):
        check_sources([Source("prose", folder, 1.0)], 4096)
