"""Conversations in training: the windows of a ConversationStream hold every kept conversation
whole, once per epoch, with targets only where the mask says (checked against the shards), as a
pure function of (data, seed, packing, i); too-long conversations are cut at a turn boundary or
dropped, and counted; the loader and validation take inputs and labels from them. Packed with
document masking, each conversation's losses equal those of the conversation alone in its row."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinytitan.data.conversations import ConversationStream
from tinytitan.data.loader import inputs_and_labels
from tinytitan.data.shards import ShardWriter
from tinytitan.kernels.cross_entropy import IGNORE_INDEX

BOS, EOS, VOCAB = 1, 2, 97


def conversation(rng, turns: int, turn_length: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """<s>, then per turn a question (not learnt) and an answer ending in </s> (learnt)."""
    ids, trained = [BOS], [False]
    for _ in range(turns):
        question = rng.integers(3, VOCAB, size=rng.integers(1, turn_length + 1)).tolist()
        answer = rng.integers(3, VOCAB, size=rng.integers(0, turn_length + 1)).tolist() + [EOS]
        ids += question + answer
        trained += [False] * len(question) + [True] * len(answer)
    return np.array(ids), np.array(trained)


def write_conversations(folder, conversations, tokens_per_shard=60):
    writer = ShardWriter(folder, "train", VOCAB, tokens_per_shard=tokens_per_shard)
    for ids, trained in conversations:
        writer.add_document(ids, trained)
    return writer.close()


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    conversations = [conversation(rng, int(rng.integers(1, 4))) for _ in range(40)]
    return conversations, write_conversations(tmp_path, conversations)


def whole_conversations(sample: np.ndarray) -> list[tuple[list, list]]:
    """(tokens, targets) of each conversation in a window, and checks that the rest is padding."""
    tokens, targets = sample
    starts = np.flatnonzero(tokens == BOS).tolist()
    assert starts and starts[0] == 0
    padding = np.flatnonzero((tokens == EOS) & (targets == IGNORE_INDEX))
    end = len(tokens)
    while padding.size and padding[-1] == end - 1 and end - 1 > starts[-1]:
        end, padding = end - 1, padding[:-1]
    bounds = starts + [end]
    return [(tokens[a:b].tolist(), targets[a:b].tolist()) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("packing", [True, False])
def test_each_epoch_holds_every_conversation_whole_once_with_its_targets(data, packing):
    conversations, shards = data
    stream = ConversationStream(shards, seq_len=40, seed=(7, 0), bos_id=BOS, eos_id=EOS, packing=packing)
    expected = sorted((c.tolist(), np.where(t, c, IGNORE_INDEX).tolist()) for c, t in conversations)
    for epoch in range(2):
        seen = []
        for index in range(epoch * stream.windows_per_epoch, (epoch + 1) * stream.windows_per_epoch):
            sample = stream.sample(index)
            assert sample.shape == (2, 41)
            held = whole_conversations(sample)
            assert len(held) == len(stream.conversations_in(index)) and (len(held) == 1 or packing)
            seen += held
        assert sorted(seen) == expected
    if packing:
        assert stream.windows_per_epoch < len(conversations)  # several per window
    again = ConversationStream(shards, seq_len=40, seed=(7, 0), bos_id=BOS, eos_id=EOS, packing=packing)
    late = 3 * stream.windows_per_epoch + 5
    assert np.array_equal(again.sample(late), stream.sample(late))  # no replay: sample i from (data, seed, i)
    first, second = (
        [stream.conversations_in(e * stream.windows_per_epoch + i) for i in range(stream.windows_per_epoch)]
        for e in (0, 1)
    )
    assert first != second and sorted(first) == sorted(second)  # a new order of the same windows


def test_a_conversation_longer_than_a_window_is_cut_after_an_answer_or_dropped(tmp_path):
    rng = np.random.default_rng(1)
    long_multi_turn = conversation(rng, 8, turn_length=5)
    first_answer_too_far = (np.array([BOS] + [5] * 30 + [6, EOS]), np.array([False] * 31 + [True, True]))
    short = conversation(rng, 1)
    shards = write_conversations(tmp_path, [long_multi_turn, first_answer_too_far, short], 1000)
    stream = ConversationStream(shards, seq_len=24, seed=(), bos_id=BOS, eos_id=EOS, shuffle=False)
    assert (stream.truncated, stream.dropped) == (1, 1)
    ids, trained = long_multi_turn
    ends = [i for i in range(25) if ids[i] == EOS and trained[i]]
    cut = ends[-1] + 1
    held = [c for i in range(stream.windows_per_epoch) for c in whole_conversations(stream.sample(i))]
    assert held == [
        (ids[:cut].tolist(), np.where(trained[:cut], ids[:cut], IGNORE_INDEX).tolist()),
        (short[0].tolist(), np.where(short[1], short[0], IGNORE_INDEX).tolist()),
    ]
    assert "1 cut after their last answer" in stream.describe() and "1 dropped" in stream.describe()


def test_the_loader_shifts_tokens_into_inputs_and_targets_into_labels():
    batch = torch.arange(2 * 2 * 5).view(2, 2, 5)
    inputs, labels = inputs_and_labels(batch)
    assert inputs.tolist() == batch[:, 0, :4].tolist() and labels.tolist() == batch[:, 1, 1:].tolist()
    plain = torch.arange(10).view(2, 5)
    assert [t.tolist() for t in inputs_and_labels(plain)] == [plain[:, :4].tolist(), plain[:, 1:].tolist()]


def test_the_built_in_conversations_train_on_answers_and_name_their_template(corpus_cache, builtin_corpus):
    from tinytitan.chat_templates import encode_chat
    from tinytitan.config.schema import Data, DataSource
    from tinytitan.data.builtin_chat import conversations
    from tinytitan.data.sources import build_streams, with_chat_template
    from tinytitan.data.tokenizer import Tokenizer
    from tinytitan.errors import UserError

    data = Data(dataset="builtin_chat", cache_dir=str(corpus_cache), num_workers=0, document_masking=True)
    stream, validation, summary = build_streams(data, 4096, seq_len=256, seed=3)
    assert list(validation) == ["chat"] and "conversations in" in summary
    assert stream.settings["data.packing"] is True and with_chat_template(data).chat_template == "tinyllama"
    # The first held-out conversation is the first window of validation, its targets the answers'.
    tokenizer = Tokenizer(builtin_corpus.tokenizer_path)
    ids, trained = encode_chat(tokenizer, conversations()[9])
    tokens, targets = validation["chat"].sample(0)
    assert tokens[: len(ids)].tolist() == ids
    assert targets[: len(ids)].tolist() == [t if k else IGNORE_INDEX for t, k in zip(ids, trained)]

    chat_folder = stream.streams[0].shard_paths[0].parent
    mixed = Data(
        dataset="sources",
        sources=[DataSource("chat", str(chat_folder)), DataSource("prose", str(builtin_corpus.sources["prose"]))],
    )
    with pytest.raises(UserError, match="'chat' tinyllama, 'prose' plain text: expected all conversations of one"):
        build_streams(mixed, 4096, seq_len=256, seed=3)
    plain = Data(dataset="builtin", cache_dir=str(corpus_cache), chat_template="tinyllama")
    with pytest.raises(UserError, match="data.chat_template = 'tinyllama': the sources were prepared with no chat"):
        with_chat_template(plain)
    unmasked = Data(dataset="builtin_chat", cache_dir=str(corpus_cache))
    with pytest.raises(UserError, match="data.packing = true with conversations: expected data.document_masking"):
        build_streams(unmasked, 4096, seq_len=256, seed=3)


def per_conversation_losses(model, stream, conversations: int) -> dict[int, torch.Tensor]:
    """Each conversation's mean loss over its trained labels, from every window of one epoch."""
    losses = {}
    for index in range(stream.windows_per_epoch):
        batch = torch.from_numpy(stream.sample(index)).unsqueeze(0)
        inputs, labels = inputs_and_labels(batch)
        with torch.no_grad():
            logits = model(inputs)
        per_token = F.cross_entropy(logits[0], labels[0], ignore_index=IGNORE_INDEX, reduction="none")
        document = (inputs[0] == BOS).cumsum(0) - 1  # the window's conversation of each input position
        for position, conversation in enumerate(stream.conversations_in(index)):
            mine = document == position
            losses[conversation] = per_token[mine].sum() / (labels[0][mine] != IGNORE_INDEX).sum()
    assert sorted(losses) == list(range(conversations))
    return losses


def test_packed_with_document_masking_gives_each_conversation_its_losses_alone(data, one_torch_thread):
    """float32 on CPU: the same weights, once over packed windows with document masking and
    per-document positions, once with each conversation alone in its row under plain causal SDPA."""
    from tinytitan.models.attention import AttentionOptions
    from tinytitan.models.llama import ModelArgs, build_model

    conversations, shards = data
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, ffn_hidden_dim=96, max_seq_len=64)
    torch.manual_seed(0)
    packed_model = build_model(args, "cpu", "torch", AttentionOptions("flex", True, True, BOS))
    alone_model = build_model(args, "cpu", "torch")
    alone_model.load_state_dict(packed_model.state_dict())
    packed = ConversationStream(shards, seq_len=40, seed=(5,), bos_id=BOS, eos_id=EOS, packing=True)
    alone = ConversationStream(shards, seq_len=40, seed=(5,), bos_id=BOS, eos_id=EOS, packing=False)
    assert packed.windows_per_epoch < alone.windows_per_epoch == len(conversations)
    together = per_conversation_losses(packed_model, packed, len(conversations))
    apart = per_conversation_losses(alone_model, alone, len(conversations))
    for conversation in range(len(conversations)):
        assert torch.allclose(together[conversation], apart[conversation], rtol=0, atol=1e-5), conversation
    assert sum(float(loss) > 0 for loss in apart.values()) == len(conversations)  # every one learns something
