"""The manifest of a prepared data folder: which shards hold which split, and how they were made.

A prepared folder (one data source: the output of scripts/prepare_data.py, or one source of the
built-in corpus) holds token shards named `<split>-*.bin` and a `manifest.json`:

    {
      "format": "tinytitan-shards", "version": 1,
      "tokenizer": {"sha256": ..., "vocab_size": ..., "bos_id": ..., "eos_id": ...},
      "settings": {...how documents were turned into tokens, e.g. "bos": true, "eos": true; and for
                   conversations "chat_template": its name, their shards holding trained-token masks...},
      "splits": {"train": {"shards": ["train-00000.bin", ...], "documents": N, "tokens": N},
                 "validation": {...}},
      ...any other keys the writer records (sources, counts of skipped inputs)...
    }

Shard paths are relative to the folder, so the folder can be moved or named by a relative path.
(Manifests written before that may hold paths relative to the working directory of the time, or
absolute ones: a shard is looked for there, and then by its name inside the folder, where every
writer puts it.) The manifest is written last and atomically, so a folder with a manifest is
complete as far as it lists.
"""

import json
import os
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
                "shards": [_inside(folder, p) for p in split["shards"]],
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


def _inside(folder: Path, shard: str | Path) -> str:
    """A shard's path relative to `folder`, whether it was given relative to the folder (a name) or
    as a path from the working directory or the root (ShardWriter's paths)."""
    shard = Path(shard)
    if not shard.is_absolute() and (folder / shard).is_file():
        return shard.as_posix()  # already relative to the folder
    relative = Path(os.path.relpath(shard.absolute(), folder.absolute()))
    if relative.parts[:1] == ("..",):
        raise ValueError(f"shard {shard} is outside the prepared folder {folder}")  # a bug of the writer
    return relative.as_posix()


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a prepared folder, checked for its format and version."""
    path = Path(folder).expanduser() / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (expected a folder prepared by scripts/prepare_data.py)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: cannot read it as JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: a JSON {type(manifest).__name__}: expected an object with format, tokenizer, splits")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}: "
            f"expected {FORMAT!r} version {VERSION}"
        )
    _check_keys(path, manifest)
    return manifest


def _check_keys(path: Path, manifest: dict) -> None:
    """The keys training reads, with their types: a hand-edited or foreign manifest is one line."""

    def expect(value, key: str, kind: type, what: str):
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            found = "missing" if value is None else f"{type(value).__name__} {json.dumps(value)[:60]}"
            raise UserError(f"{path}: key {key!r} is {found}: expected {what}")
        return value

    tokenizer = expect(manifest.get("tokenizer"), "tokenizer", dict, "an object with sha256 and vocab_size")
    expect(tokenizer.get("sha256"), "tokenizer.sha256", str, "the tokenizer's checksum as a string")
    expect(tokenizer.get("vocab_size"), "tokenizer.vocab_size", int, "an integer")
    splits = expect(manifest.get("splits"), "splits", dict, "an object of splits (train, validation)")
    for name, split in splits.items():
        expect(split, f"splits.{name}", dict, "an object with shards, documents and tokens")
        shards = expect(split.get("shards"), f"splits.{name}.shards", list, "a list of shard file names")
        for index, shard in enumerate(shards):
            expect(shard, f"splits.{name}.shards[{index}]", str, "a shard file name")
        for key in ("documents", "tokens"):
            expect(split.get(key), f"splits.{name}.{key}", int, "an integer")


def split_shards(folder: str | Path, split: str) -> list[Path]:
    """The shards of one split (empty when the folder has no such split)."""
    folder = Path(folder).expanduser()
    entry = read_manifest(folder)["splits"].get(split)
    return [_shard_path(folder, shard) for shard in entry["shards"]] if entry else []


def _shard_path(folder: Path, shard: str) -> Path:
    """Where a listed shard is: inside the folder (the form written now), else where an older
    manifest's path points, else by its name inside the folder (missing: read_header says so)."""
    for candidate in (folder / shard, Path(shard), folder / Path(shard).name):
        if candidate.is_file():
            return candidate
    return folder / shard
