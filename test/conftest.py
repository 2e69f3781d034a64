"""Shared fixtures: a built-in corpus prepared once per test session in a temporary cache, its
tokenizer, the small Hugging Face model folder that the unit and end-to-end Hugging Face tests both
use; every test under test/e2e/ marked `e2e`, and GPU tests skipped without CUDA. Shared functions
live in helpers.py."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run under the Triton interpreter, which triton only honours if it
# is chosen before triton is first imported (importing torch does not import it). helpers.py imports
# the model, and with it triton: it is imported inside the fixtures below, after this line.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

E2E_FOLDER = Path(__file__).resolve().parent / "e2e"


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by marker (-m e2e, -m "not e2e")
def pytest_collection_modifyitems(config, items):
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if E2E_FOLDER in item.path.parents:
            item.add_marker(pytest.mark.e2e)
        if skip_gpu and "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """A cache folder holding the built-in corpus (with its own tokenizer), built once."""
    from tinytitan.data.builtin_corpus import prepare_builtin_corpus

    cache = tmp_path_factory.mktemp("cache")
    prepare_builtin_corpus(cache)
    return cache


@pytest.fixture(scope="session")
def builtin_corpus(corpus_cache):
    from tinytitan.data.builtin_corpus import prepare_builtin_corpus

    return prepare_builtin_corpus(corpus_cache)


@pytest.fixture(scope="module")
def tokenizer(builtin_corpus):
    """The built-in corpus's tokenizer (the data-preparation tests tokenize with it)."""
    from tinytitan.data.tokenizer import Tokenizer

    return Tokenizer(builtin_corpus.tokenizer_path)


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    """For the awkward-sized model below."""
    from helpers import train_small_tokenizer

    return train_small_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")


@pytest.fixture(scope="module")
def awkward_folder(tmp_path_factory, small_tokenizer):
    """helpers.awkward_hf_model saved by transformers in safetensors shards, with the tokenizer.model beside it."""
    from helpers import awkward_hf_model

    folder = tmp_path_factory.mktemp("awkward") / "hf"
    awkward_hf_model().save_pretrained(folder, max_shard_size="100KB")
    shutil.copyfile(small_tokenizer, folder / "tokenizer.model")
    assert (folder / "model.safetensors.index.json").is_file(), "expected a sharded save"
    return folder


@pytest.fixture(scope="module")
def roomy_folder(tmp_path_factory, small_tokenizer):
    """The awkward model with room for a conversation (256 positions) and the tokenizer's 320 ids
    (every id it generates is then text), saved by transformers: for chatting and generating."""
    from helpers import awkward_hf_model

    folder = tmp_path_factory.mktemp("roomy") / "hf"
    awkward_hf_model(seed=1, max_position_embeddings=256, vocab_size=320).save_pretrained(folder)
    shutil.copyfile(small_tokenizer, folder / "tokenizer.model")
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """This process computes in one thread for the module's tests (as ONE_THREAD does for subprocesses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
