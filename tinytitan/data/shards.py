"""The on-disk token shard: a fixed 64-byte header, then packed uint16 tokens.

Layout (all little-endian):

    offset  size  field
    0       8     magic b"TTSHARD\\0"
    8       4     uint32 format version, 1
    12      4     uint32 token dtype code: 1 = uint16 (the only one in version 1)
    16      8     uint64 number of tokens
    24      8     uint64 number of documents packed in the shard
    32      4     uint32 vocabulary size of the tokenizer that produced the tokens
    36      28    zeros
    64      2*N   the N tokens, documents back to back (each delimited by the tokenizer's bos/eos)

The file is exactly 64 + 2*N bytes, so a truncated copy is caught. The header keeps the tokens
64-byte aligned for memory mapping. Shards are written under a temporary name and renamed, so a
shard that exists is complete.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytitan.errors import UserError
from tinytitan.files import atomic_write_bytes

MAGIC = b"TTSHARD\0"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQI")
_DTYPES = {1: np.dtype("<u2")}  # dtype code -> numpy dtype
_UINT16_CODE = 1
MAX_VOCAB = 1 << 16  # ids must fit in uint16


@dataclass(frozen=True)
class ShardHeader:
    num_tokens: int
    num_documents: int
    vocab_size: int
    version: int = VERSION
    dtype_code: int = _UINT16_CODE

    def pack(self) -> bytes:
        fields = _HEADER.pack(
            MAGIC, self.version, self.dtype_code, self.num_tokens, self.num_documents, self.vocab_size
        )
        return fields.ljust(HEADER_BYTES, b"\0")


def write_shard(path: str | Path, tokens: np.ndarray, num_documents: int, vocab_size: int) -> ShardHeader:
    """Write `tokens` (any integer array) as a shard, atomically; every id must be < vocab_size."""
    path = Path(path)
    if not 0 < vocab_size <= MAX_VOCAB:
        raise UserError(f"shard {path}: vocab_size={vocab_size}: expected 1..{MAX_VOCAB} to store ids as uint16")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise UserError(f"shard {path}: token ids span {tokens.min()}..{tokens.max()}: expected 0..{vocab_size - 1}")
    header = ShardHeader(num_tokens=int(tokens.size), num_documents=num_documents, vocab_size=vocab_size)
    stored = np.ascontiguousarray(tokens.astype(_DTYPES[_UINT16_CODE], copy=False))
    # Durable before the rename: a shard costs a tokenizing pass to make again.
    atomic_write_bytes(path, b"".join([header.pack(), stored]), fsync=True)
    return header


def read_header(path: str | Path) -> ShardHeader:
    """The header of a shard, checked against the file's magic, version, dtype and size."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as error:
        raise UserError(f"shard {path}: cannot read it ({error.strerror})") from None
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise UserError(f"shard {path}: not a tinytitan token shard (expected the magic {MAGIC!r} in a 64-byte header)")
    _, version, dtype_code, num_tokens, num_documents, vocab_size = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise UserError(f"shard {path}: format version {version}: expected {VERSION}")
    if dtype_code not in _DTYPES:
        raise UserError(f"shard {path}: token dtype code {dtype_code}: expected one of {sorted(_DTYPES)}")
    expected_size = HEADER_BYTES + num_tokens * _DTYPES[dtype_code].itemsize
    if size != expected_size:
        raise UserError(
            f"shard {path}: {size} bytes on disk: expected {expected_size} for {num_tokens} tokens "
            "(truncated or appended to?)"
        )
    return ShardHeader(num_tokens, num_documents, vocab_size, version, dtype_code)


def open_shard(path: str | Path) -> tuple[ShardHeader, np.ndarray]:
    """The header and a read-only memory map of the tokens (nothing is read until used)."""
    header = read_header(path)
    if header.num_tokens == 0:
        return header, np.zeros(0, dtype=_DTYPES[header.dtype_code])
    tokens = np.memmap(
        path, dtype=_DTYPES[header.dtype_code], mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)
    )
    return header, tokens


class ShardWriter:
    """Packs documents into shards of about `tokens_per_shard` tokens: <prefix>-00000.bin, ..."""

    def __init__(self, folder: str | Path, prefix: str, vocab_size: int, tokens_per_shard: int = 1 << 27):
        self.folder, self.prefix, self.vocab_size = Path(folder), prefix, vocab_size
        self.tokens_per_shard = tokens_per_shard
        self.paths: list[Path] = []
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0
        self._pending_documents = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add_document(self, ids) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self._pending.append(ids)
        self._pending_tokens += ids.size
        self._pending_documents += 1
        if self._pending_tokens >= self.tokens_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._pending_documents:
            return
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.bin"
        write_shard(path, np.concatenate(self._pending), self._pending_documents, self.vocab_size)
        self.paths.append(path)
        self._pending, self._pending_tokens, self._pending_documents = [], 0, 0

    def close(self) -> list[Path]:
        self.flush()
        return self.paths
