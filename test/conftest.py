"""Shared fixtures: a built-in corpus prepared once per test session in a temporary cache, the
real Llama 2 tokenizer when the checkout has it, and the skipping of GPU tests without CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run under the Triton interpreter, which triton only honours if it
# is chosen before triton is first imported (importing torch does not import it).
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The real Llama 2 tokenizer lives beside the checkout and is never committed into it; as for
# scripts/prepare_data.py, $TINYTITAN_TOKENIZER names it elsewhere.
LLAMA2_TOKENIZER = Path(
    os.environ.get("TINYTITAN_TOKENIZER") or REPO_ROOT.parent / "shared/assets/llama2-tokenizer.model"
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


def run_command(*argv: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root as a user would, capturing its output. The launchers
    use this test session's Python rather than setting up .venv."""
    return subprocess.run(
        argv,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TINYTITAN_PYTHON": sys.executable, **(env or {})},
    )


def run_python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_command(sys.executable, *args, **kwargs)
