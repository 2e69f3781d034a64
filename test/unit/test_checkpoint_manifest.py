"""A checkpoint's content manifest: written over what one process or several ranks wrote, and any
change to a listed file named; what --overwrite of a conversion may replace."""

import zlib

import pytest
import torch

from tinytitan import dcp_reader
from tinytitan.errors import UserError
from tinytitan.model_files import DCP_IMPORT_FILES, HF_EXPORT_FILES, require_replaceable


@pytest.fixture
def sealed(tmp_path):
    folder = tmp_path / "ckpt"
    dcp_reader.save_model({"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3)}, folder)
    dcp_reader.seal(folder)
    return folder


def test_the_manifest_lists_every_file_with_its_size_and_crc32(sealed):
    manifest = dcp_reader.read_manifest(sealed, "checkpoint")
    names = sorted(p.name for p in sealed.iterdir() if p.name != dcp_reader.MANIFEST_FILE)
    assert sorted(manifest) == names and ".metadata" in names
    for name, entry in manifest.items():
        data = (sealed / name).read_bytes()  # an independent reading of the file
        assert entry == {"bytes": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    assert dcp_reader.verify(sealed, "checkpoint") == [] and dcp_reader.sizes_match(sealed)


def test_each_rank_checksums_the_files_it_wrote_and_rank_0_the_rest(tmp_path):
    for name in ("__0_0.distcp", "__1_0.distcp", "__1_1.distcp", "__10_0.distcp", ".metadata", "x.json"):
        (tmp_path / name).write_bytes(b"x")
    assert dcp_reader.files_of_rank(tmp_path, 0) == [".metadata", "__0_0.distcp", "x.json"]
    assert dcp_reader.files_of_rank(tmp_path, 1) == ["__1_0.distcp", "__1_1.distcp"]
    assert dcp_reader.files_of_rank(tmp_path, 10) == ["__10_0.distcp"]


def shard(folder):
    return next(folder.glob("*.distcp"))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: shard(f).unlink(), "is missing"),
        (lambda f: shard(f).write_bytes(shard(f).read_bytes()[:-100]), "(truncated or replaced)"),
        (lambda f: f.joinpath(".metadata").write_bytes(b"garbage"), "(truncated or replaced)"),
    ],
)
def test_a_changed_file_is_named(sealed, damage, message):
    damage(sealed)
    problems = dcp_reader.verify(sealed, "checkpoint")
    assert len(problems) == 1 and message in problems[0], problems
    assert not dcp_reader.sizes_match(sealed)


def test_flipped_bytes_of_the_same_size_fail_the_checksum_and_are_named(sealed):
    path = shard(sealed)
    data = bytearray(path.read_bytes())
    data[100:110] = bytes(b ^ 0xFF for b in data[100:110])
    path.write_bytes(bytes(data))
    problems = dcp_reader.verify(sealed, "checkpoint")
    assert problems == [f"{path.name} does not match its checksum " + problems[0].split("checksum ")[1]]
    assert "damaged" in problems[0] and dcp_reader.sizes_match(sealed)  # same size: only the checksum sees it
    with pytest.raises(UserError, match=f"checkpoint {sealed}: {path.name} does not match"):
        dcp_reader.model_metadata(sealed)


def test_ranks_share_the_files_to_verify(sealed):
    manifest = dcp_reader.read_manifest(sealed, "checkpoint")
    shares = [dcp_reader.verify(sealed, "checkpoint", rank, 2) for rank in (0, 1)]
    assert shares == [[], []]
    shard(sealed).unlink()
    found = [problem for rank in (0, 1) for problem in dcp_reader.verify(sealed, "checkpoint", rank, 2)]
    assert len(manifest) >= 2 and found == [f"{shard_name(manifest)} is missing"]


def shard_name(manifest):
    return next(name for name in manifest if name.endswith(".distcp"))


def test_a_checkpoint_without_manifest_reads_with_a_note(sealed, capsys):
    (sealed / dcp_reader.MANIFEST_FILE).unlink()
    assert dcp_reader.verify(sealed, "checkpoint") is None
    assert set(dcp_reader.model_metadata(sealed)) == {"w", "b"}
    assert "loaded unverified" in capsys.readouterr().out
    assert not dcp_reader.sizes_match(sealed)  # keep_latest_k leaves it alone


def test_a_garbage_manifest_is_named(sealed):
    (sealed / dcp_reader.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(UserError, match=f"checkpoint {sealed}: unreadable manifest.json"):
        dcp_reader.verify(sealed, "checkpoint")


def test_a_metadata_file_missing_from_a_step_folder_is_said_so(sealed):
    (sealed / ".metadata").unlink()
    with pytest.raises(UserError, match=r"\.metadata is missing; the checkpoint cannot be loaded"):
        dcp_reader.require_checkpoint(sealed, "checkpoint")


def test_overwrite_replaces_only_an_earlier_output_or_an_empty_folder(tmp_path, sealed):
    require_replaceable(tmp_path / "absent", HF_EXPORT_FILES, "convert_dcp_to_hf.py")
    (tmp_path / "empty").mkdir()
    require_replaceable(tmp_path / "empty", HF_EXPORT_FILES, "convert_dcp_to_hf.py")
    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "model-00001-of-00002.safetensors", "tokenizer.json"):
        (export / name).write_text("{}")
    require_replaceable(export, HF_EXPORT_FILES, "convert_dcp_to_hf.py")
    require_replaceable(sealed, DCP_IMPORT_FILES, "convert_hf_to_dcp.py")
    (export / "train").mkdir()  # e.g. a prepared data folder's split
    with pytest.raises(UserError, match="earlier output of convert_dcp_to_hf.py .* this folder holds train;"):
        require_replaceable(export, HF_EXPORT_FILES, "convert_dcp_to_hf.py")
    with pytest.raises(UserError, match="this folder has no .metadata"):
        require_replaceable(_with_file(tmp_path), DCP_IMPORT_FILES, "convert_hf_to_dcp.py")
    with pytest.raises(UserError, match="this folder holds config.json"):
        require_replaceable(export, DCP_IMPORT_FILES, "convert_hf_to_dcp.py")


def _with_file(tmp_path):
    folder = tmp_path / "tokenizer_only"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"x")
    return folder
