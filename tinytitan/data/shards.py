"""The on-disk token shard: a fixed 64-byte header, packed uint16 tokens, and in version 2 a mask.

Layout (all little-endian):

    offset  size  field
    0       8     magic b"TTSHARD\\0"
    8       4     uint32 format version: 1, or 2 for a shard with a trained-token mask
    12      4     uint32 token dtype code: 1 = uint16 (the only one)
    16      8     uint64 number of tokens
    24      8     uint64 number of documents packed in the shard
    32      4     uint32 vocabulary size of the tokenizer that produced the tokens
    36      4     uint32 flags (version 2; zero in version 1): bit 0, a trained-token mask follows
    40      24    zeros
    64      2*N   the N tokens, documents back to back (each delimited by the tokenizer's bos/eos)
    64+2N   N     version 2 with flag bit 0: one byte per token, 1 where training learns the token
                  (an answer of a conversation and its end-of-turn token), else 0

The file is exactly 64 + 2*N bytes (64 + 3*N with a mask), so a truncated copy is caught. The header
keeps the tokens 64-byte aligned for memory mapping. A shard without a mask is written as version 1,
so pretraining shards stay readable by versions that know only it; both versions are read. Shards are
written under a temporary name and renamed, so a shard that exists is complete.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytitan.errors import UserError
from tinytitan.files import atomic_write_bytes

MAGIC = b"TTSHARD\0"
VERSION = 1  # without a mask
MASKED_VERSION = 2  # with a trained-token mask after the tokens
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQII")
_HAS_MASK = 1  # flags bit 0
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
    flags: int = 0

    @property
    def has_mask(self) -> bool:
        return bool(self.flags & _HAS_MASK)

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.num_tokens * (_DTYPES[self.dtype_code].itemsize + self.has_mask)

    def pack(self) -> bytes:
        fields = _HEADER.pack(
            MAGIC, self.version, self.dtype_code, self.num_tokens, self.num_documents, self.vocab_size, self.flags
        )
        return fields.ljust(HEADER_BYTES, b"\0")


def write_shard(
    path: str | Path, tokens: np.ndarray, num_documents: int, vocab_size: int, trained: np.ndarray | None = None
) -> ShardHeader:
    """Write `tokens` (any integer array) as a shard, atomically; every id must be < vocab_size.
    `trained`, one boolean per token, makes it a version-2 shard with that mask."""
    path = Path(path)
    if not 0 < vocab_size <= MAX_VOCAB:
        raise UserError(f"shard {path}: vocab_size={vocab_size}: expected 1..{MAX_VOCAB} to store ids as uint16")
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise UserError(f"shard {path}: token ids span {tokens.min()}..{tokens.max()}: expected 0..{vocab_size - 1}")
    masked = trained is not None
    if masked and np.shape(trained) != tokens.shape:
        raise ValueError(f"shard {path}: {np.shape(trained)} mask values for {tokens.shape} tokens")  # a writer's bug
    header = ShardHeader(
        num_tokens=int(tokens.size),
        num_documents=num_documents,
        vocab_size=vocab_size,
        version=MASKED_VERSION if masked else VERSION,
        flags=_HAS_MASK if masked else 0,
    )
    parts = [header.pack(), np.ascontiguousarray(tokens.astype(_DTYPES[_UINT16_CODE], copy=False))]
    if masked:
        parts.append(np.asarray(trained, dtype=np.uint8).tobytes())
    # Durable before the rename: a shard costs a tokenizing pass to make again.
    atomic_write_bytes(path, b"".join(parts), fsync=True)
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
    _, version, dtype_code, num_tokens, num_documents, vocab_size, flags = _HEADER.unpack_from(raw)
    if version not in (VERSION, MASKED_VERSION):
        raise UserError(f"shard {path}: format version {version}: expected {VERSION} or {MASKED_VERSION}")
    if dtype_code not in _DTYPES:
        raise UserError(f"shard {path}: token dtype code {dtype_code}: expected one of {sorted(_DTYPES)}")
    header = ShardHeader(num_tokens, num_documents, vocab_size, version, dtype_code, flags if version > 1 else 0)
    if size != header.file_bytes:
        mask = " and their mask" if header.has_mask else ""
        raise UserError(
            f"shard {path}: {size} bytes on disk: expected {header.file_bytes} for {num_tokens} tokens{mask} "
            "(truncated or appended to?)"
        )
    return header


def open_shard(path: str | Path) -> tuple[ShardHeader, np.ndarray]:
    """The header and a read-only memory map of the tokens (nothing is read until used)."""
    header = read_header(path)
    if header.num_tokens == 0:
        return header, np.zeros(0, dtype=_DTYPES[header.dtype_code])
    tokens = np.memmap(
        path, dtype=_DTYPES[header.dtype_code], mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)
    )
    return header, tokens


def open_mask(path: str | Path, header: ShardHeader) -> np.ndarray | None:
    """A read-only memory map of the trained-token mask (uint8, 1 = trained), or None without one."""
    if not header.has_mask:
        return None
    if header.num_tokens == 0:
        return np.zeros(0, dtype=np.uint8)
    offset = HEADER_BYTES + header.num_tokens * _DTYPES[header.dtype_code].itemsize
    return np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(header.num_tokens,))


class ShardWriter:
    """Packs documents into shards of about `tokens_per_shard` tokens: <prefix>-00000.bin, ...
    Documents given with a trained-token mask make masked shards (every document of a writer has
    one, or none does)."""

    def __init__(self, folder: str | Path, prefix: str, vocab_size: int, tokens_per_shard: int = 1 << 27):
        self.folder, self.prefix, self.vocab_size = Path(folder), prefix, vocab_size
        self.tokens_per_shard = tokens_per_shard
        self.paths: list[Path] = []
        self._pending: list[np.ndarray] = []
        self._pending_masks: list[np.ndarray] = []
        self._pending_tokens = 0
        self._pending_documents = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add_document(self, ids, trained=None) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        self._pending.append(ids)
        if trained is not None:
            self._pending_masks.append(np.asarray(trained, dtype=bool))
        self._pending_tokens += ids.size
        self._pending_documents += 1
        if self._pending_tokens >= self.tokens_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._pending_documents:
            return
        path = self.folder / f"{self.prefix}-{len(self.paths):05d}.bin"
        if self._pending_masks and len(self._pending_masks) != len(self._pending):
            raise ValueError("ShardWriter: some documents came with a trained-token mask and some without")
        trained = np.concatenate(self._pending_masks) if self._pending_masks else None
        write_shard(path, np.concatenate(self._pending), self._pending_documents, self.vocab_size, trained)
        self.paths.append(path)
        self._pending, self._pending_masks, self._pending_tokens, self._pending_documents = [], [], 0, 0

    def close(self) -> list[Path]:
        self.flush()
        return self.paths
