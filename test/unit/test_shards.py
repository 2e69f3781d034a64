import numpy as np
import pytest

from tinytitan.data.shards import HEADER_BYTES, ShardWriter, open_mask, open_shard, read_header, write_shard
from tinytitan.errors import UserError


def test_round_trip_keeps_every_token_and_the_header(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50_000, size=12_345)
    write_shard(tmp_path / "a.bin", tokens, num_documents=17, vocab_size=50_000)
    header, stored = open_shard(tmp_path / "a.bin")
    assert (header.num_tokens, header.num_documents, header.vocab_size) == (12_345, 17, 50_000)
    assert stored.dtype == np.uint16 and np.array_equal(stored, tokens)
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 2 * 12_345
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary left behind


def test_largest_uint16_id_and_an_empty_shard_round_trip(tmp_path):
    write_shard(tmp_path / "max.bin", [65_535, 0, 65_534], num_documents=1, vocab_size=65_536)
    assert open_shard(tmp_path / "max.bin")[1].tolist() == [65_535, 0, 65_534]
    write_shard(tmp_path / "empty.bin", np.zeros(0, dtype=np.int64), num_documents=0, vocab_size=10)
    header, tokens = open_shard(tmp_path / "empty.bin")
    assert header.num_tokens == 0 and len(tokens) == 0


def test_a_masked_shard_is_version_2_and_keeps_its_mask_beside_the_tokens(tmp_path):
    rng = np.random.default_rng(2)
    documents = [(rng.integers(0, 900, size=n), rng.random(n) < 0.4) for n in rng.integers(1, 200, size=30)]
    writer = ShardWriter(tmp_path, "train", vocab_size=900, tokens_per_shard=700)
    for ids, trained in documents:
        writer.add_document(ids, trained)
    tokens, masks = [], []
    for path in writer.close():
        header, stored = open_shard(path)
        assert (header.version, header.has_mask) == (2, True)
        assert path.stat().st_size == HEADER_BYTES + 3 * header.num_tokens
        tokens.append(np.array(stored)), masks.append(np.array(open_mask(path, header)))
    assert np.array_equal(np.concatenate(tokens), np.concatenate([ids for ids, _ in documents]))
    assert np.array_equal(np.concatenate(masks), np.concatenate([t for _, t in documents]).astype(np.uint8))
    path = tmp_path / "plain.bin"
    write_shard(path, [1, 2, 3], 1, 10)  # no mask: version 1, as before
    header = read_header(path)
    assert (header.version, open_mask(path, header)) == (1, None)
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + (2).to_bytes(4, "little") + raw[12:36] + (1).to_bytes(4, "little") + raw[40:])
    with pytest.raises(UserError, match="70 bytes on disk: expected 73 for 3 tokens and their mask"):
        read_header(path)  # a version-2 header whose mask is missing


def test_writer_packs_documents_into_shards_without_losing_any(tmp_path):
    rng = np.random.default_rng(1)
    documents = [rng.integers(0, 1000, size=rng.integers(1, 300)) for _ in range(50)]
    writer = ShardWriter(tmp_path, "train", vocab_size=1000, tokens_per_shard=1000)
    for document in documents:
        writer.add_document(document)
    paths = writer.close()
    assert len(paths) > 3 and paths == sorted(paths)
    opened = [open_shard(p) for p in paths]
    assert np.array_equal(np.concatenate([t for _, t in opened]), np.concatenate(documents))
    assert sum(h.num_documents for h, _ in opened) == 50


@pytest.mark.parametrize(
    "tokens, vocab, message",
    [
        ([1, 2, 1000], 1000, "span 1..1000: expected 0..999"),
        ([-1, 2], 1000, "span -1..2"),
        ([1], 70_000, "vocab_size=70000"),
    ],
)
def test_out_of_range_ids_are_refused(tmp_path, tokens, vocab, message):
    with pytest.raises(UserError, match=message):
        write_shard(tmp_path / "x.bin", tokens, 1, vocab)
    assert not list(tmp_path.iterdir())


def good_shard(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100), 1, 1000)
    return path, path.read_bytes()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda raw: raw[: HEADER_BYTES + 150], "150 bytes|expected 264"),  # truncated
        (lambda raw: raw + b"\0\0", "266 bytes on disk: expected 264"),  # appended
        (lambda raw: b"NOTSHARD" + raw[8:], "not a tinytitan token shard"),
        (lambda raw: raw[:8] + (3).to_bytes(4, "little") + raw[12:], "format version 3: expected 1 or 2"),
        (lambda raw: raw[:12] + (7).to_bytes(4, "little") + raw[16:], "dtype code 7"),
        (lambda raw: raw[:10], "not a tinytitan token shard"),
    ],
)
def test_damaged_shards_are_reported_with_their_path(tmp_path, corrupt, message):
    path, raw = good_shard(tmp_path)
    path.write_bytes(corrupt(raw))
    with pytest.raises(UserError, match=message) as error:
        read_header(path)
    assert str(path) in str(error.value)


def test_missing_shard_is_reported(tmp_path):
    with pytest.raises(UserError, match="nope.bin: cannot read it"):
        read_header(tmp_path / "nope.bin")
