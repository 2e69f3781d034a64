import pytest
from helpers import LLAMA2_TOKENIZER

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError

MIXED_TEXT = (
    "The quick brown fox — naïve café, 1234567 digits, emoji 🦙 and Ελληνικά.\n\n"
    "def fibonacci(n: int) -> int:\n"
    '    """Return the n-th Fibonacci number."""\n'
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "\ta, b = b, a + b  # tab-indented\n"
    "    return a\n"
)


@pytest.fixture(params=["llama2", "builtin"])
def tokenizer(request, builtin_corpus):
    if request.param == "llama2":
        if not LLAMA2_TOKENIZER.is_file():
            pytest.skip(f"the Llama 2 tokenizer is not at {LLAMA2_TOKENIZER}")
        return Tokenizer(LLAMA2_TOKENIZER)
    return Tokenizer(builtin_corpus.tokenizer_path)


def test_round_trip_of_mixed_prose_and_code(tokenizer):
    ids = tokenizer.encode(MIXED_TEXT)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == MIXED_TEXT
    assert tokenizer.decode(tokenizer.encode(MIXED_TEXT, bos=True, eos=True)) == MIXED_TEXT


def test_bos_and_eos_are_added_on_request_only(tokenizer):
    plain = tokenizer.encode("hello world")
    assert tokenizer.encode("hello world", bos=True) == [tokenizer.bos_id] + plain
    assert tokenizer.encode("hello world", eos=True) == plain + [tokenizer.eos_id]
    assert tokenizer.bos_id not in plain and tokenizer.eos_id not in plain
    assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)


@pytest.mark.skipif(not LLAMA2_TOKENIZER.is_file(), reason="the Llama 2 tokenizer is not beside the checkout")
def test_llama2_tokenizer_has_its_known_shape():
    tokenizer = Tokenizer(LLAMA2_TOKENIZER)
    assert tokenizer.vocab_size == 32000
    assert len(tokenizer.checksum()) == 64


def test_missing_and_invalid_files_are_reported(tmp_path):
    with pytest.raises(UserError, match="nope.model: no such file"):
        Tokenizer(tmp_path / "nope.model")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(UserError, match="garbage.model: not a sentencepiece model"):
        Tokenizer(garbage)
