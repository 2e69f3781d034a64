"""A sentencepiece tokenizer with Llama's conventions (bos and eos added on request)."""

import hashlib
from functools import cached_property
from pathlib import Path

import sentencepiece as spm

from tinytitan.errors import UserError


class Tokenizer:
    """Loads any Llama-style `tokenizer.model` (the Llama 2 one: 32000 pieces, bos=1, eos=2)."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path).expanduser()
        if not self.path.is_file():
            raise UserError(f"tokenizer {self.path}: no such file (expected a sentencepiece tokenizer.model)")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as error:
            raise UserError(f"tokenizer {self.path}: not a sentencepiece model ({error})") from None
        if self.bos_id < 0 or self.eos_id < 0:
            raise UserError(f"tokenizer {self.path}: expected bos and eos pieces, as Llama tokenizers have")

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self._sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def check_fits(self, vocab_size: int, model: str = "the model") -> "Tokenizer":
        """Refuse a tokenizer with more pieces than the model's vocabulary: its ids would index
        past the embedding table. Returns the tokenizer, for chaining."""
        if self.vocab_size > vocab_size:
            raise UserError(
                f"tokenizer {self.path}: {self.vocab_size} pieces: "
                f"expected at most the vocab_size {vocab_size} of {model}"
            )
        return self

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return ([self.bos_id] if bos else []) + self._sp.EncodeAsIds(text) + ([self.eos_id] if eos else [])

    def piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(token_id)

    @cached_property
    def special_pieces(self) -> dict[str, int]:
        """The control and unknown pieces (`<s>`, `</s>`, `<unk>`) by their text: sentencepiece reads
        that text as plain characters, the exported Hugging Face tokenizer as the token itself."""
        return {
            self._sp.IdToPiece(i): i for i in range(self.vocab_size) if self._sp.IsControl(i) or self._sp.IsUnknown(i)
        }

    def decode(self, ids: list[int]) -> str:
        return self._sp.DecodeIds(list(ids))

    def checksum(self) -> str:
        """sha256 of the model file: names what a set of shards was tokenized with."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()
