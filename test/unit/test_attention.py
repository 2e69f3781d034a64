"""The attention backends against a naive reference (an explicit boolean mask, softmax in float64)
on awkward packings of documents; the document layout (ids, positions, flash-attn's offsets) against
plain Python loops; a packed document that sees exactly what it would see alone; flex training like
SDPA; exact resume and cached generation with document masking; and the setups refused."""

import importlib.util
import shutil

import pytest
import torch
from helpers import DOCUMENT_MASKING, debug_config, prepare, write_lines

from tinytitan.errors import UserError
from tinytitan.generation import generate
from tinytitan.models.attention import (
    AttentionOptions,
    attention_reference,
    cumulative_lengths,
    document_layout,
    document_positions,
    flash_attention,
    flex_attention,
    sdpa_attention,
)
from tinytitan.models.llama import ModelArgs, build_model
from tinytitan.run_folder import RunFolder
from tinytitan.train import train

# One thread: on a shared 2-core machine two threads contend, and flex's unfused CPU path suffers most.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOS = 1
SEQ = 37  # not a multiple of FlexAttention's 128-token blocks, nor of anything else
TINY = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=61, ffn_hidden_dim=96, max_seq_len=64)

# Where each window's documents start (its bos tokens), for two windows.
PACKINGS = {
    "one document fills the window": [[0], [0]],
    "a document of one token": [[0, 5, 6, 20], [0, 36]],
    "windows starting mid-document": [[9, 30], [1]],
    "many short documents": [list(range(0, SEQ, 3)), [0, 2, 4, 5, 7, 11, 12, 13, 30, 31, 32, 33, 34, 35, 36]],
}


def packed_tokens(starts: list[list[int]], seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    """Random tokens other than bos, with bos where each window's documents start."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, TINY.vocab_size, (len(starts), seq), generator=generator)
    for row, row_starts in enumerate(starts):
        tokens[row, row_starts] = BOS
    return tokens


def allowed_by_loops(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, seq, seq]: query i sees key j if j <= i and no bos lies in (j, i], by plain loops."""
    batch, seq = tokens.shape
    allowed = torch.zeros(batch, seq, seq, dtype=torch.bool)
    for b in range(batch):
        for i in range(seq):
            for j in range(i, -1, -1):
                allowed[b, i, j] = True
                if tokens[b, j] == BOS:
                    break  # j starts i's document: nothing before it is visible
    return allowed


def leaves(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, seq, n, head_dim, generator=generator).requires_grad_() for n in (heads, kv_heads, kv_heads)
    ]


def forward_and_gradients(attend, q, k, v, upstream):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = attend(q, k, v)
    out.backward(upstream)
    return [out.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("kv_heads", [1, 4])
@pytest.mark.parametrize("packing", PACKINGS)
def test_document_masked_flex_equals_the_reference_forward_and_every_gradient(packing, kv_heads):
    tokens = packed_tokens(PACKINGS[packing])
    q, k, v = leaves(2, SEQ, 4, kv_heads)
    upstream = torch.randn(q.shape)
    mask = document_layout(tokens, AttentionOptions("flex", document_masking=True, bos_id=BOS)).mask
    ours = forward_and_gradients(lambda q, k, v: flex_attention(q, k, v, mask), q, k, v, upstream)
    allowed = allowed_by_loops(tokens)
    expected = forward_and_gradients(lambda q, k, v: attention_reference(q, k, v, allowed), q, k, v, upstream)
    for name, got, want in zip(("output", "dq", "dk", "dv"), ours, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


def test_causal_flex_and_sdpa_equal_the_reference():
    q, k, v = leaves(2, SEQ, 4, 2)
    upstream = torch.randn(q.shape)
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril().expand(2, SEQ, SEQ)
    expected = forward_and_gradients(lambda q, k, v: attention_reference(q, k, v, causal), q, k, v, upstream)
    mask = document_layout(packed_tokens([[0], [0]]), AttentionOptions("flex")).mask
    for attend in (lambda q, k, v: flex_attention(q, k, v, mask), sdpa_attention):
        for got, want in zip(forward_and_gradients(attend, q, k, v, upstream), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("packing", PACKINGS)
def test_positions_and_flash_offsets_follow_the_documents(packing):
    tokens = packed_tokens(PACKINGS[packing])
    expected_positions, offsets = torch.zeros_like(tokens), []
    for b, row in enumerate(tokens.tolist()):
        for i, token in enumerate(row):
            starts_here = i == 0 or token == BOS
            expected_positions[b, i] = 0 if starts_here else expected_positions[b, i - 1] + 1
            if starts_here:
                offsets.append(b * SEQ + i)
    assert torch.equal(document_positions(tokens, BOS), expected_positions)
    assert cumulative_lengths(tokens, BOS).tolist() == [*offsets, tokens.numel()]
    assert cumulative_lengths(tokens, BOS).dtype == torch.int32
    assert tokens[:, 0].tolist() == packed_tokens(PACKINGS[packing])[:, 0].tolist()  # the input is left alone


def test_a_packed_document_sees_exactly_what_it_would_see_alone():
    """Masking on, per-document positions: the last document's logits and loss do not depend on the
    documents packed before it, and equal those of the document run alone."""
    options = AttentionOptions("flex", document_masking=True, per_document_positions=True, bos_id=BOS)
    torch.manual_seed(0)
    model = build_model(TINY, "cpu", attention=options)
    tokens = packed_tokens([[0, 7, 8, 19], [2, 12]])
    others = packed_tokens([[0, 3, 19], [2, 4, 12]], seed=1)
    others[:, 19:] = tokens[:, 19:]
    others[1, 12:] = tokens[1, 12:]  # the same last documents, after other ones
    alone = [tokens[0:1, 19:], tokens[1:2, 12:]]
    with torch.no_grad():
        packed, changed = model(tokens), model(others)
        for row, start in ((0, 19), (1, 12)):
            torch.testing.assert_close(packed[row, start:], changed[row, start:], atol=1e-5, rtol=0)
            torch.testing.assert_close(packed[row, start:], model(alone[row])[0], atol=1e-5, rtol=0)
        labels = torch.full_like(tokens, -100)
        labels[0, 19:] = tokens[0, 19:].roll(-1)
        torch.testing.assert_close(model(tokens, labels), model(others, labels), atol=1e-5, rtol=0)
        # The test could fail: without the mask and the positions, earlier documents change the last one.
        torch.manual_seed(0)
        window = build_model(TINY, "cpu")(tokens)
    assert not torch.allclose(window[0, 19:], packed[0, 19:], atol=1e-3)


def test_cached_generation_of_a_document_masked_model_equals_recomputing_with_flex():
    """Generation with the KV cache takes SDPA whatever the backend: for a prompt of one document
    (the tokenizer's bos first) it must give what the flex model computes over the whole sequence."""
    options = AttentionOptions("flex", document_masking=True, per_document_positions=True, bos_id=BOS)
    torch.manual_seed(0)
    model = build_model(TINY, "cpu", attention=options).eval()
    prompt = [BOS, *packed_tokens([[]], seq=9)[0].tolist()]
    cached = generate(model, prompt, 12)
    assert cached == generate(model, prompt, 12, use_cache=False)


def training_losses(tmp_path, corpus_cache, *overrides) -> dict[int, float]:
    records = train(
        debug_config(
            tmp_path,
            corpus_cache,
            "--training.global_batch_tokens=256",
            "--data.num_workers=0",
            "--training.micro_batch_size=4",  # one micro-step per step
            *overrides,
        )
    )
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def test_flex_without_masking_trains_like_sdpa(tmp_path, corpus_cache):
    steps = ("--training.steps=10", "--lr_scheduler.warmup_steps=3")
    sdpa = training_losses(tmp_path / "sdpa", corpus_cache, *steps)
    flex = training_losses(tmp_path / "flex", corpus_cache, *steps, "--model.attention=flex")
    assert sorted(flex) == list(range(1, 11))
    for step in sdpa:
        assert flex[step] == pytest.approx(sdpa[step], abs=1e-5)
    assert sdpa[10] < sdpa[1] - 0.5


def test_document_masked_training_resumes_exactly(tmp_path, corpus_cache):
    masked = (
        *DOCUMENT_MASKING,
        "--training.steps=3",
        "--lr_scheduler.warmup_steps=1",
        "--checkpoint.enable",
        "--checkpoint.interval=2",
        "--checkpoint.keep_latest_k=0",
    )
    whole = training_losses(tmp_path, corpus_cache, *masked)
    shutil.rmtree(RunFolder.of_job(tmp_path, "debug").checkpoint(3))  # the run resumes from step 2
    resumed = training_losses(tmp_path, corpus_cache, *masked)
    assert sorted(resumed) == [3]
    assert resumed[3] == whole[3]  # bitwise


def test_masking_refuses_data_without_documents(tmp_path, corpus_cache, tokenizer):
    write_lines(tmp_path / "raw/a.jsonl", [{"text": f"document {i} " * 20} for i in range(40)])
    prepare(tokenizer, tmp_path / "raw/a.jsonl", "--output", tmp_path / "nobos", "--no-bos")
    sources = f'--data.sources=[{{name="plain", path="{tmp_path / "nobos"}"}}]'
    masked = ("--model.attention=flex", "--data.document_masking=true", "--training.steps=1")
    steps = ("--lr_scheduler.warmup_steps=0", f"--data.tokenizer_path={tokenizer.path}")
    with pytest.raises(UserError, match=r"data source 'plain' .* was prepared without a bos token") as error:
        training_losses(tmp_path, corpus_cache, *masked, *steps, "--data.dataset=sources", sources)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match='data.dataset = "synthetic" has no documents'):
        training_losses(tmp_path, corpus_cache, *masked, *steps, "--data.dataset=synthetic")


def test_options_refused_when_the_model_is_built():
    with pytest.raises(UserError, match="expected the data's bos id"):
        AttentionOptions("flex", document_masking=True)
    with pytest.raises(UserError, match='expected attention backend "flex" or "flash"'):
        AttentionOptions("sdpa", document_masking=True, bos_id=BOS)


# ---- on a GPU: the compiled flex kernel and flash-attn, in bfloat16 ----

needs_flash = pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")


def gpu_comparison(attend_of, masked: bool, kv_heads: int):
    """attend_of(tokens) -> attend(q, k, v) on CUDA in bfloat16 against the reference, at a packing
    of several blocks (seq 300) with documents of every kind."""
    tokens = packed_tokens([[0, 1, 40, 41, 200], [17, 150, 299]], seq=300).cuda()
    q, k, v = (t.detach().cuda().bfloat16() for t in leaves(2, 300, 8, kv_heads, head_dim=64))
    upstream = torch.randn(q.shape, device="cuda").bfloat16()
    allowed = allowed_by_loops(tokens.cpu()).cuda() if masked else torch.ones(300, 300, device="cuda").tril().bool()
    allowed = allowed.expand(2, 300, 300)
    ours = forward_and_gradients(attend_of(tokens), q, k, v, upstream)
    expected = forward_and_gradients(lambda q, k, v: attention_reference(q, k, v, allowed), q, k, v, upstream)
    for name, got, want in zip(("output", "dq", "dk", "dv"), ours, expected):
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [True, False], ids=["documents", "causal"])
def test_compiled_flex_on_cuda_equals_the_reference(masked):
    options = AttentionOptions("flex", document_masking=masked, bos_id=BOS)
    gpu_comparison(
        lambda tokens: lambda q, k, v: flex_attention(q, k, v, document_layout(tokens, options).mask), masked, 2
    )


@pytest.mark.gpu
@needs_flash
@pytest.mark.parametrize("masked", [True, False], ids=["documents", "causal"])
def test_flash_attn_equals_the_reference(masked):
    options = AttentionOptions("flash", document_masking=masked, bos_id=BOS)
    gpu_comparison(
        lambda tokens: lambda q, k, v: flash_attention(q, k, v, document_layout(tokens, options).mask), masked, 2
    )
