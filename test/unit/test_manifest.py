"""The manifest of a prepared folder: shard paths relative to the folder in every form it is given
them, older manifests' paths still read, and a manifest without its keys refused in one line."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tinytitan.data.manifest import MANIFEST_NAME, read_manifest, split_shards, write_manifest
from tinytitan.data.shards import ShardWriter, open_shard
from tinytitan.errors import UserError


def prepared(folder, tokenizer, shard_paths=None):
    """A prepared folder of one train shard; `shard_paths(folder, paths)` gives what the manifest lists."""
    writer = ShardWriter(folder, "train", tokenizer.vocab_size)
    writer.add_document(np.arange(50) % tokenizer.vocab_size)
    paths = writer.close()
    listed = shard_paths(folder, paths) if shard_paths else paths
    write_manifest(folder, tokenizer, {"train": {"shards": listed, "documents": 1, "tokens": 50}}, settings={})
    return folder


@pytest.mark.parametrize("form", ["relative to cwd", "absolute", "name"])
def test_shard_paths_are_stored_relative_to_the_folder(tmp_path, tokenizer, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    given = {"relative to cwd": lambda f, p: p, "absolute": lambda f, p: [x.absolute() for x in p]}
    given["name"] = lambda f, p: [x.name for x in p]
    folder = prepared(Path("data/source"), tokenizer, given[form])  # a relative folder, as data.cache_dir may be
    assert read_manifest(folder)["splits"]["train"]["shards"] == ["train-00000.bin"]
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "data", moved)  # a folder moved (or named from another working directory) still reads
    monkeypatch.chdir(moved)
    assert [len(open_shard(p)[1]) for p in split_shards(moved / "source", "train")] == [50]


def test_older_manifests_with_cwd_relative_or_absolute_paths_still_read(tmp_path, tokenizer, monkeypatch):
    folder = prepared(tmp_path / "source", tokenizer)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    monkeypatch.chdir(tmp_path)
    for listed in ["source/train-00000.bin", str(folder / "train-00000.bin"), "gone.tmp-1/train-00000.bin"]:
        manifest["splits"]["train"]["shards"] = [listed]
        manifest_path.write_text(json.dumps(manifest))
        assert [p.resolve() for p in split_shards(folder, "train")] == [folder / "train-00000.bin"]


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda m: m.pop("tokenizer"), "'tokenizer' is missing"),
        (lambda m: m["tokenizer"].pop("vocab_size"), "'tokenizer.vocab_size' is missing"),
        (lambda m: m["tokenizer"].update(vocab_size="4096"), "'tokenizer.vocab_size' is str"),
        (lambda m: m["tokenizer"].update(sha256=None), "'tokenizer.sha256' is missing"),
        (lambda m: m.pop("splits"), "'splits' is missing"),
        (lambda m: m.update(splits=["train"]), "'splits' is list"),
        (lambda m: m["splits"]["train"].pop("shards"), "'splits.train.shards' is missing"),
        (lambda m: m["splits"]["train"].update(shards="train-00000.bin"), "'splits.train.shards' is str"),
        (lambda m: m["splits"]["train"].update(shards=[3]), r"'splits.train.shards\[0\]' is int"),
        (lambda m: m["splits"]["train"].update(tokens=True), "'splits.train.tokens' is bool"),
        (lambda m: m["splits"]["train"].pop("documents"), "'splits.train.documents' is missing"),
    ],
)
def test_a_manifest_without_its_keys_is_one_line_naming_the_key(tmp_path, tokenizer, edit, key):
    folder = prepared(tmp_path / "source", tokenizer)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    edit(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"{folder / MANIFEST_NAME}: key {key}.*expected") as error:
        split_shards(folder, "train")
    assert "\n" not in str(error.value)


def test_a_manifest_that_is_not_an_object_is_one_line(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[1, 2]")
    with pytest.raises(UserError, match="manifest.json: .*expected"):
        read_manifest(tmp_path)
