"""Data preparation in this process (tinytitan.prepare, one worker) on small files in each real
layout: the shards hold exactly the tokenizer's ids of the documents kept, filters and splits choose
the right documents, a preparation resumed after some inputs gives the shards of one run, and bad
input gives its one-line error or a counted skip. The expected tokens come from the tokenizer
itself, document by document. scripts/prepare_data.py itself runs in test/e2e/."""

import json
import re
from pathlib import Path

import pytest
from helpers import (
    SETS,
    expected,
    folder_contents,
    prepare,
    slimpajama_rows,
    texts,
    tokens_of,
    write_lines,
    write_numbered_inputs,
    write_parquet,
    write_starcoderdata,
)

from tinytitan.data.manifest import read_manifest, split_shards
from tinytitan.data.shards import open_shard
from tinytitan.errors import UserError
from tinytitan.prepare import run as prepare_data
from tinytitan.prepare.one_input import input_key
from tinytitan.prepare.options import find_tokenizer


def documents_of(tokens: list[int], bos_id: int) -> list[tuple[int, ...]]:
    starts = [i for i, token in enumerate(tokens) if token == bos_id] + [len(tokens)]
    return [tuple(tokens[a:b]) for a, b in zip(starts, starts[1:])]


# ---- the layouts ----


def test_slimpajama_keeps_every_token_of_the_kept_sets_and_leaves_out_github(tmp_path, tokenizer):
    files = {
        "train/chunk1/example_train_0.jsonl.zst": slimpajama_rows("a", 13),
        "train/chunk2/example_train_1.jsonl.zst": slimpajama_rows("b", 9),
    }
    for name, rows in files.items():
        write_lines(tmp_path / "SlimPajama" / name, rows, zst=True, frames=3)
    prepare(tokenizer, tmp_path / "SlimPajama/train", "--output", tmp_path / "out")

    kept = [
        row["text"]
        for name in sorted(files)
        for row in files[name]
        if row["meta"]["redpajama_set_name"] != "RedPajamaGithub"
    ]
    github = sum(row["meta"]["redpajama_set_name"] == "RedPajamaGithub" for rows in files.values() for row in rows)
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, kept)
    manifest = read_manifest(tmp_path / "out")
    assert list(manifest["splits"]) == ["train"]
    train = manifest["splits"]["train"]
    assert (train["documents"], train["tokens"]) == (len(kept), len(expected(tokenizer, kept)))
    assert github > 0 and manifest["documents_filtered"] == {"set RedPajamaGithub": github}
    assert manifest["documents_skipped"] == {}
    assert set(manifest["groups"]) == set(SETS) - {"RedPajamaGithub"}
    assert [record["name"] for record in manifest["inputs"]] == sorted(files)
    assert manifest["tokenizer"]["sha256"] == tokenizer.checksum()
    assert (tmp_path / "out" / manifest["tokenizer_file"]).read_bytes() == tokenizer.path.read_bytes()


@pytest.mark.parametrize(
    "flags, kept_sets",
    [
        (["--include-sets", "RedPajamaBook,RedPajamaArXiv"], {"RedPajamaBook", "RedPajamaArXiv"}),
        (["--exclude-sets", ""], set(SETS)),
        (
            ["--exclude-sets", "RedPajamaC4,RedPajamaGithub", "--format", "slimpajama"],
            {"RedPajamaBook", "RedPajamaArXiv"},
        ),
    ],
)
def test_set_filter(tmp_path, tokenizer, flags, kept_sets):
    rows = slimpajama_rows("s", 16)
    write_lines(tmp_path / "sp/chunk1/x.jsonl.zst", rows, zst=True)
    prepare(tokenizer, tmp_path / "sp", "--output", tmp_path / "out", *flags)
    kept = [row["text"] for row in rows if row["meta"]["redpajama_set_name"] in kept_sets]
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, kept)
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["groups"]) == kept_sets
    assert sum(manifest["documents_filtered"].values()) == len(rows) - len(kept)


def test_starcoderdata_language_filter(tmp_path, tokenizer, capsys):
    files = write_starcoderdata(tmp_path / "starcoderdata")
    prepare(tokenizer, tmp_path / "starcoderdata", "--languages", "python", "--output", tmp_path / "python")
    assert "--languages leaves out 1 of 3 input(s)" in capsys.readouterr().err
    python = [text for name in sorted(files) if name.startswith("python/") for text in files[name]]
    assert tokens_of(tmp_path / "python", "train") == expected(tokenizer, python)
    manifest = read_manifest(tmp_path / "python")
    assert list(manifest["groups"]) == ["python"] and manifest["groups"]["python"]["documents"] == len(python)
    assert [r["name"] for r in manifest["inputs"]] == [
        f"starcoderdata/{n}" for n in sorted(files) if n.startswith("python/")
    ]

    prepare(tokenizer, tmp_path / "starcoderdata", "--format", "starcoder", "--output", tmp_path / "all")
    everything = [text for name in sorted(files) for text in files[name]]
    assert tokens_of(tmp_path / "all", "train") == expected(tokenizer, everything)
    assert set(read_manifest(tmp_path / "all")["groups"]) == {"java", "python"}


def test_plain_jsonl_jsonl_zst_and_txt(tmp_path, tokenizer):
    data = tmp_path / "mine"
    plain, packed, notes = texts("plain", 5), texts("packed", 7), texts("note", 3)
    write_lines(data / "a.jsonl", [{"id": i, "text": t} for i, t in enumerate(plain)])
    write_lines(data / "b.jsonl.zst", [{"text": t} for t in packed], zst=True, frames=3)
    (tmp_path / "notes").mkdir()
    for i, text in enumerate(notes):
        (tmp_path / "notes" / f"{i}.txt").write_text(text)
    (tmp_path / "notes/3-empty.txt").write_text("")
    prepare(tokenizer, str(data / "*.jsonl*"), tmp_path / "notes", "--output", tmp_path / "out")
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, plain + packed + notes)
    manifest = read_manifest(tmp_path / "out")
    assert manifest["documents_filtered"] == {"empty text": 1}
    inputs = manifest["inputs"]
    assert [(r["name"], r["format"], r["splits"]["train"]["documents"]) for r in inputs] == [
        ("mine/a.jsonl", "jsonl", 5),
        ("mine/b.jsonl.zst", "jsonl", 7),
        ("notes", "txt", 3),
    ]


@pytest.mark.parametrize(
    "flags, bos, eos",
    [
        ([], True, True),
        (["--no-bos"], False, True),
        (["--no-eos"], True, False),
        (["--no-bos", "--no-eos"], False, False),
    ],
)
def test_bos_and_eos_flags(tmp_path, tokenizer, flags, bos, eos):
    documents = texts("d", 6)
    write_lines(tmp_path / "d.jsonl", [{"text": t} for t in documents])
    prepare(tokenizer, tmp_path / "d.jsonl", "--output", tmp_path / "out", *flags)
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, documents, bos=bos, eos=eos)
    settings = read_manifest(tmp_path / "out")["settings"]
    assert (settings["bos"], settings["eos"]) == (bos, eos)


def test_many_shards_per_input_hold_whole_documents(tmp_path, tokenizer):
    documents = texts("long", 40)
    write_lines(tmp_path / "d.jsonl", [{"text": t} for t in documents])
    prepare(tokenizer, tmp_path / "d.jsonl", "--output", tmp_path / "out", "--tokens-per-shard", "100")
    shards = split_shards(tmp_path / "out", "train")
    assert len(shards) > 3
    for path in shards:  # each shard starts a document and ends one
        header, tokens = open_shard(path)
        assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
        assert header.num_documents == int((tokens == tokenizer.bos_id).sum())
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, documents)


# ---- splits ----


def test_holdout_is_a_deterministic_share_of_each_input(tmp_path, tokenizer):
    contents = texts("code", 300)
    for language in ("go", "python"):  # the same documents under two input names
        write_parquet(tmp_path / "sc" / language / "train-00000-of-00001.parquet", contents)
    prepare(tokenizer, tmp_path / "sc", "--holdout-fraction", "0.2", "--output", tmp_path / "out")

    index_of = {tuple(tokenizer.encode(text, bos=True, eos=True)): i for i, text in enumerate(contents)}
    assert len(index_of) == len(contents)
    inputs = read_manifest(tmp_path / "out")["inputs"]
    assert [r["name"] for r in inputs] == [
        f"sc/{language}/train-00000-of-00001.parquet" for language in ("go", "python")
    ]
    chosen = {}  # split -> (go's document indices, python's)
    for split in ("train", "validation"):
        indices = [index_of[d] for d in documents_of(tokens_of(tmp_path / "out", split), tokenizer.bos_id)]
        go_count = inputs[0]["splits"][split]["documents"]
        chosen[split] = (indices[:go_count], indices[go_count:])
    for train, validation in zip(chosen["train"], chosen["validation"]):
        assert train == sorted(train) and validation == sorted(validation)  # file order within a split
        assert sorted(train + validation) == list(range(len(contents)))  # every document once
        assert 0.1 < len(validation) / len(contents) < 0.3
    assert chosen["validation"][0] != chosen["validation"][1]  # the hash takes the input's name

    prepare(tokenizer, tmp_path / "sc", "--holdout-fraction", "0.2", "--output", tmp_path / "again")
    assert folder_contents(tmp_path / "again") == folder_contents(tmp_path / "out")


def test_splits_of_two_runs_merge_into_one_manifest(tmp_path, tokenizer):
    root = tmp_path / "SlimPajama"
    validation = write_lines(root / "validation/chunk1/example_holdout_0.jsonl.zst", slimpajama_rows("v", 8), zst=True)
    train = write_lines(root / "train/chunk1/example_train_0.jsonl.zst", slimpajama_rows("t", 12), zst=True)
    out = tmp_path / "out"
    prepare(tokenizer, root / "validation", "--split", "validation", "--output", out)
    assert list(read_manifest(out)["splits"]) == ["validation"]
    validation_shards = {p.name: p.read_bytes() for p in out.glob("validation-*.bin")}
    prepare(tokenizer, root / "train", "--output", out)

    manifest = read_manifest(out)
    assert sorted(manifest["splits"]) == ["train", "validation"]
    for split, path in (("train", train), ("validation", validation)):
        kept = [json.loads(line)["text"] for line in _decompressed_lines(path) if "RedPajamaGithub" not in line]
        assert tokens_of(out, split) == expected(tokenizer, kept)
        assert manifest["splits"][split]["documents"] == len(kept)
    assert {p.name: p.read_bytes() for p in out.glob("validation-*.bin")} == validation_shards

    merged = folder_contents(out)
    prepare(tokenizer, root / "validation", "--split", "validation", "--output", out)  # done before: nothing changes
    assert folder_contents(out) == merged
    with pytest.raises(
        UserError,
        match=r"input train/chunk1/example_train_0\.jsonl\.zst: already prepared in .* differently "
        r"\(then \{'split': 'train'.*now \{'split': 'validation'",
    ):
        prepare(tokenizer, root / "train", "--split", "validation", "--output", out)


def _decompressed_lines(path: Path) -> list[str]:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode().splitlines()


# ---- resuming ----


def test_a_run_resumed_after_some_inputs_gives_the_shards_of_one_run(tmp_path, tokenizer):
    write_numbered_inputs(tmp_path / "data", 4)
    flags = ["--tokens-per-shard", "150"]
    prepare(tokenizer, tmp_path / "data", "--output", tmp_path / "whole", *flags)

    resumed = tmp_path / "resumed"
    prepare(tokenizer, tmp_path / "data/p0.jsonl", tmp_path / "data/p2.jsonl", "--output", resumed, *flags)
    assert len(read_manifest(resumed)["inputs"]) == 2
    key = input_key("data/p1.jsonl")  # what a run killed while writing p1 leaves behind
    (resumed / f"train-{key}-00007.bin").write_bytes(b"half a shard")
    (resumed / f"train-{key}-00008.bin.tmp").write_bytes(b"a quarter")
    prepare(tokenizer, tmp_path / "data", "--output", resumed, *flags)

    whole = folder_contents(tmp_path / "whole")
    assert len(whole[0]) > 4 and folder_contents(resumed) == whole
    assert not list(resumed.glob("*.tmp"))


# ---- bad input ----


def _truncated_zst(data: Path):
    path = write_lines(data / "t.jsonl.zst", [{"text": t} for t in texts("t", 60)], zst=True)
    path.write_bytes(path.read_bytes()[:-20])
    return [
        data
    ], r"t\.jsonl\.zst: the zstd stream is truncated or corrupt after line \d+ .*expected a complete \.zst file"


def _not_zstd(data: Path):
    (data / "n.jsonl.zst").write_bytes(b'{"text": "plain json, not compressed"}\n')
    return [data], r"n\.jsonl\.zst: the zstd stream is truncated or corrupt after line 0"


def _unreadable_parquet(data: Path):
    (data / "python").mkdir()
    (data / "python/train-0.parquet").write_bytes(b"PAR1 this is not parquet at all PAR1")
    return [data], r"train-0\.parquet: not a readable parquet file \(.*\): expected StarCoderData's"


def _parquet_without_content(data: Path):
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"text": ["x"]}), data / "c.parquet")
    return [data / "c.parquet"], r"c\.parquet: no column 'content' \(columns: text\)"


def _empty_glob(data: Path):
    return [str(data / "*.jsonl.zst")], r"input '.*\*\.jsonl\.zst': no files match this pattern"


def _missing_path(data: Path):
    return [data / "nowhere"], r"input '.*nowhere': no such file or folder"


def _folder_without_inputs(data: Path):
    (data / "README.md").write_text("nothing to read\n")
    return [data], r"input '.*': holds no \.jsonl\.zst, \.jsonl, \.parquet or \.txt files"


def _unknown_file_name(data: Path):
    (data / "corpus.csv").write_text("text\nhello\n")
    return [data / "corpus.csv"], r"cannot tell its format from its name: expected .*or give --format"


def _two_inputs_of_one_name(data: Path):
    write_lines(data / "x/a.jsonl", [{"text": "one"}])
    write_lines(data / "y/x/a.jsonl", [{"text": "two"}])
    return [data / "x/a.jsonl", data / "y/x/a.jsonl"], r"are both named 'x/a\.jsonl'"


@pytest.mark.parametrize(
    "make",
    [
        _truncated_zst,
        _not_zstd,
        _unreadable_parquet,
        _parquet_without_content,
        _empty_glob,
        _missing_path,
        _folder_without_inputs,
        _unknown_file_name,
        _two_inputs_of_one_name,
    ],
)
def test_bad_files_are_one_line_errors_and_leave_nothing(tmp_path, tokenizer, make):
    data = tmp_path / "data"
    data.mkdir()
    inputs, message = make(data)
    with pytest.raises(UserError, match=message):
        prepare(tokenizer, *inputs, "--output", tmp_path / "out")
    assert not list(tmp_path.glob("out/*.bin")) and not (tmp_path / "out/manifest.json").exists()


GOOD = texts("good", 4)


def _jsonl_with(bad_line: bytes, *flags):
    def make(data: Path):
        lines = [json.dumps({"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}}).encode() for t in GOOD]
        write_lines(data / "x.jsonl", lines[:2] + [bad_line] + lines[2:])
        return [data / "x.jsonl", *flags], r"x\.jsonl line 3: "

    return make


def _null_content(data: Path):
    write_parquet(data / "python/train-0.parquet", GOOD[:2] + [None] + GOOD[2:])
    return [data], r"train-0\.parquet row 2: "


def _txt_not_utf8(data: Path):
    for i, text in enumerate(GOOD):
        (data / f"{i}.txt").write_text(text)
    (data / "2b.txt").write_bytes(b"caf\xe9 in latin-1")
    return [data], r"2b\.txt: "


@pytest.mark.parametrize(
    "make, reason, message",
    [
        (
            _jsonl_with(b'{"text": "cut off'),
            "invalid JSON",
            r"invalid JSON \(.* at column \d+\): expected one JSON object per line",
        ),
        (_jsonl_with(b'["a list"]'), "invalid JSON", r"a JSON list: expected one JSON object per line"),
        (
            _jsonl_with(b'{"content": "elsewhere"}'),
            "missing text",
            r"no field 'text': expected the document as a string in 'text'",
        ),
        (_jsonl_with(b'{"text": 42}'), "missing text", r"'text' is a int: expected"),
        (_jsonl_with(b'{"text": "caf\xe9"}'), "invalid UTF-8", r"invalid UTF-8 at byte \d+: expected UTF-8 JSON"),
        (
            _jsonl_with(b'{"text": "half a pair \\ud800"}'),
            "invalid Unicode",
            r"text holds '\\ud800' .*expected valid Unicode",
        ),
        (
            _jsonl_with(b'{"text": "no set"}', "--format", "slimpajama"),
            "missing set name",
            r"no string field meta\.redpajama_set_name: expected SlimPajama's lines",
        ),
        (_null_content, "missing content", r"null 'content': expected the code as a string"),
        (_txt_not_utf8, "invalid UTF-8", r"invalid UTF-8 at byte 3: expected a UTF-8 text file"),
    ],
)
def test_bad_documents_are_counted_skips_or_errors_with_strict(tmp_path, tokenizer, make, reason, message):
    data = tmp_path / "data"
    data.mkdir()
    inputs, location = make(data)
    prepare(tokenizer, *inputs, "--output", tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["documents_skipped"] == {reason: 1}
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, GOOD)
    assert re.search(location + message, manifest["inputs"][0]["first_skipped"][reason])

    with pytest.raises(UserError, match=location + message + r".* \(--strict\)$"):
        prepare(tokenizer, *inputs, "--output", tmp_path / "strict", "--strict", "--tokens-per-shard", "10")
    assert not list(tmp_path.glob("strict/*.bin"))  # nor the shards written before the bad line


def test_blank_lines_and_empty_documents_are_counted_but_not_errors(tmp_path, tokenizer):
    write_lines(tmp_path / "x.jsonl", [{"text": GOOD[0]}, b"", b"   ", {"text": ""}, {"text": GOOD[1]}])
    prepare(tokenizer, tmp_path / "x.jsonl", "--output", tmp_path / "out", "--strict")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["documents_filtered"] == {"blank line": 2, "empty text": 1} and manifest["documents_skipped"] == {}
    assert tokens_of(tmp_path / "out", "train") == expected(tokenizer, GOOD[:2])


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--exclude-sets", "RedPajamaGit"],
            r"--exclude-sets RedPajamaGit: expected RedPajama set names: .*RedPajamaGithub",
        ),
        (["--languages", "cobol,python"], r"--languages: no parquet files for cobol: .*\(found: python\)"),
        (["--holdout-fraction", "1.5"], r"--holdout-fraction 1\.5: expected a fraction in \[0, 1\)"),
        (["--split", "validation", "--holdout-fraction", "0.1"], r"expected one or the other"),
        (["--split", "Train-2"], r"--split 'Train-2': expected lowercase letters"),
    ],
)
def test_bad_options(tmp_path, tokenizer, flags, message):
    write_parquet(tmp_path / "sc/python/train-0.parquet", GOOD)
    with pytest.raises(UserError, match=message):
        prepare(tokenizer, tmp_path / "sc", "--output", tmp_path / "out", *flags)


def test_a_folder_takes_one_tokenizer_and_one_document_shape(tmp_path, tokenizer, monkeypatch):
    write_lines(tmp_path / "x.jsonl", [{"text": t} for t in GOOD])
    prepare(tokenizer, tmp_path / "x.jsonl", "--output", tmp_path / "out")
    before = folder_contents(tmp_path / "out")
    write_lines(tmp_path / "y.jsonl", [{"text": t} for t in GOOD])
    with pytest.raises(
        UserError, match=r"prepared with bos=True eos=True .*expected the same settings .*this run: bos=False"
    ):
        prepare(tokenizer, tmp_path / "y.jsonl", "--output", tmp_path / "out", "--no-bos")
    assert folder_contents(tmp_path / "out") == before

    (tmp_path / "other").mkdir()
    (tmp_path / "other/manifest.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds a manifest\.json without done/ records"):
        prepare(tokenizer, tmp_path / "x.jsonl", "--output", tmp_path / "other")

    monkeypatch.setenv("TINYTITAN_TOKENIZER", str(tmp_path / "missing.model"))
    with pytest.raises(UserError, match=r"missing\.model: no such file"):
        prepare_data.main([str(tmp_path / "x.jsonl"), "--output", str(tmp_path / "third")])


def test_the_default_tokenizer(tmp_path):
    assert find_tokenizer(None, {"TINYTITAN_TOKENIZER": "/x/t.model"}, tmp_path / "repo") == Path("/x/t.model")
    with pytest.raises(UserError, match=r"no tokenizer: expected --tokenizer"):
        find_tokenizer(None, {}, tmp_path / "repo")
    shared = tmp_path / "shared/assets/llama2-tokenizer.model"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"model")
    assert find_tokenizer(None, {}, tmp_path / "repo") == shared
