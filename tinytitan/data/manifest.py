"""The manifest of a prepared data folder: which shards hold which split, and how they were made.

A prepared folder (one data source: the output of scripts/prepare_data.py, or one source of the
built-in corpus) holds token shards named `<split>-*.bin` and a `manifest.json`:

    {
      "format": "tinytitan-shards", "version": 1,
      "tokenizer": {"sha256": ..., "vocab_size": ..., "bos_id": ..., "eos_id": ...},
      "settings": {...how documents were turned into tokens, e.g. "bos": true, "eos": true...},
      "splits": {"train": {"shards": ["train-00000.bin", ...], "documents": N, "tokens": N},
                 "validation": {...}},
      ...any other keys the writer records (sources, counts of skipped inputs)...
    }

Shard paths are relative to the folder. The manifest is written last and atomically, so a folder
with a manifest is complete as far as it lists.
"""

import json
from pathlib import Path

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.files import atomic_write_json

MANIFEST_NAME = "manifest.json"
FORMAT = "tinytitan-shards"
VERSION = 1


def tokenizer_record(tokenizer: Tokenizer) -> dict:
    return {
        "sha256": tokenizer.checksum(),
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
    }


def write_manifest(folder: str | Path, tokenizer: Tokenizer, splits: dict[str, dict], settings: dict, **extra) -> Path:
    """Write <folder>/manifest.json atomically. `splits` maps a split name to its shards (paths
    inside `folder`), documents and tokens."""
    folder = Path(folder)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": tokenizer_record(tokenizer),
        "settings": settings,
        "splits": {
            name: {
                "shards": [str(Path(p).relative_to(folder) if Path(p).is_absolute() else p) for p in split["shards"]],
                "documents": int(split["documents"]),
                "tokens": int(split["tokens"]),
            }
            for name, split in splits.items()
        },
        **extra,
    }
    path = folder / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared folder, checked for its format and version."""
    path = Path(folder).expanduser() / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected a folder prepared by scripts/prepare_data.py)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read it as JSON ({error})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}: "
            f"expected {FORMAT!r} version {VERSION}"
        )
    return manifest


def split_shards(folder: str | Path, split: str) -> list[Path]:
    """The shards of one split (empty when the folder has no such split)."""
    folder = Path(folder).expanduser()
    entry = read_manifest(folder)["splits"].get(split)
    return [folder / shard for shard in entry["shards"]] if entry else []
