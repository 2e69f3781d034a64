"""scripts/convert_dcp_to_gguf.py, read back with gguf's own reader: every tensor (f32 exact, q8_0
within its rounding, the 200-wide ffn_down in f16), the hyperparameters, the sentencepiece
vocabulary padded to the model's (331 ids for 320 pieces); and llama.cpp's adjacent-pair rotary on
the reordered query/key rows gives our attention scores. The model is transformers' awkward one:
head_dim 16, 3 query heads per key/value head.

llama.cpp's own convert_hf_to_gguf.py is not installable from a package index, so the comparison
with what it writes runs only where $LLAMA_CPP_CONVERTER names it (with its gguf-py importable)."""

import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

from tinytitan.data.tokenizer import Tokenizer
from tinytitan.errors import UserError
from tinytitan.gguf_export import gguf_name
from tinytitan.model_files import load_model

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")  # awkward_folder is written by transformers

CONVERT = runpy.run_path(str(REPO_ROOT / "scripts/convert_dcp_to_gguf.py"), run_name="convert_dcp_to_gguf")


@pytest.fixture(scope="module")
def written(awkward_folder, tmp_path_factory):
    """The awkward model written in f32 and q8_0, and our model loaded from the same folder."""
    folder = tmp_path_factory.mktemp("gguf")
    for outtype in ("f32", "q8_0"):
        CONVERT["main"]([str(awkward_folder), str(folder / f"{outtype}.gguf"), "--outtype", outtype])
    model, spec = load_model(awkward_folder, "cpu", torch.float32)
    return folder, model, spec


def field(reader, key):
    return reader.fields[key].contents()


def tensors(reader) -> dict:
    """name -> (ggml type name, dequantized float32 array in our [out, in] shape)."""
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        out[tensor.name] = (tensor.tensor_type.name, np.asarray(values, dtype=np.float32).reshape(tensor.shape[::-1]))
    return out


def interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Each head's rows in adjacent-pair order, written independently of gguf_export: row 2i is
    the half-split row i, row 2i+1 the row i + head_dim/2."""
    per_head = weight.reshape(heads, -1, weight.shape[1])
    half = per_head.shape[1] // 2
    return torch.stack((per_head[:, :half], per_head[:, half:]), dim=2).reshape(weight.shape)


def test_every_tensor_and_field_reads_back(written, small_tokenizer):
    folder, model, spec = written
    args = spec.args
    for outtype in ("f32", "q8_0"):
        reader = gguf.GGUFReader(folder / f"{outtype}.gguf")
        assert field(reader, "general.architecture") == "llama"
        expected_fields = {
            "llama.block_count": 3,
            "llama.context_length": 64,
            "llama.embedding_length": 96,
            "llama.feed_forward_length": 200,
            "llama.attention.head_count": 6,
            "llama.attention.head_count_kv": 2,
            "llama.rope.dimension_count": 16,
            "llama.vocab_size": 331,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.model": "llama",
        }
        assert {key: field(reader, key) for key in expected_fields} == expected_fields
        assert field(reader, "llama.rope.freq_base") == pytest.approx(5000.0)
        assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)

        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(small_tokenizer))
        pieces = [processor.id_to_piece(i) for i in range(processor.vocab_size())]
        assert field(reader, "tokenizer.ggml.tokens") == pieces + [f"[PAD{i}]" for i in range(320, 331)]
        scores = field(reader, "tokenizer.ggml.scores")
        assert scores[:320] == pytest.approx([processor.get_score(i) for i in range(320)])
        types = field(reader, "tokenizer.ggml.token_type")
        assert types[:3] == [2, 3, 3] and types[320:] == [5] * 11  # <unk>, <s>, </s>; the padding ids unused
        assert types.count(6) == 256  # byte fallback: one piece per byte

        found = tensors(reader)
        state = model.state_dict()
        assert sorted(found) == sorted(gguf_name(name) for name in state)
        for name, ours in state.items():
            kind, values = found[gguf_name(name)]
            if name.endswith(("wq.weight", "wk.weight")):
                ours = interleaved(ours, args.n_heads if "wq" in name else args.n_kv_heads)
            if outtype == "f32" or ours.dim() == 1:
                assert kind == "F32" and np.array_equal(values, ours.numpy()), name
            elif name.endswith("w2.weight"):  # rows of 200 values: not whole q8_0 blocks of 32
                assert kind == "F16" and np.array_equal(values, ours.half().float().numpy()), name
            else:  # q8_0: each value within half a step of its block's scale (max |x| / 127), plus f16 rounding
                assert kind == "Q8_0", name
                blocks = ours.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 127
                error = (torch.from_numpy(values).reshape(-1, 32) - ours.reshape(-1, 32)).abs()
                assert (error <= blocks * 0.5 + 1e-3 * blocks * 127).all(), name


def rotate_adjacent_pairs(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's rotary (the original Llama's): dimensions 2i, 2i+1 form a complex number
    rotated by position * theta^(-2i/d). x: [seq, heads, head_dim]."""
    seq, _, dim = x.shape
    frequencies = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(seq, dtype=torch.float64), frequencies)
    pairs = torch.view_as_complex(x.double().reshape(seq, -1, dim // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)[:, None]).reshape(x.shape)


def test_llama_cpp_rotary_on_the_written_rows_gives_our_attention_scores(written):
    folder, model, spec = written
    args, attention = spec.args, model.layers["0"].attention
    found = tensors(gguf.GGUFReader(folder / "f32.gguf"))
    x = torch.randn(11, args.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        q = attention.wq(x).view(11, args.n_heads, args.head_dim)
        k = attention.wk(x).view(11, args.n_kv_heads, args.head_dim)
        cos, sin = model.rope_cos[:11], model.rope_sin[:11]
        q, k = attention.kernels.rotary(q[None], cos, sin)[0], attention.kernels.rotary(k[None], cos, sin)[0]
    theirs_q, theirs_k = (
        rotate_adjacent_pairs((x @ torch.tensor(found[f"blk.0.attn_{which}.weight"][1]).T).reshape(11, -1, 16), 5000)
        for which in "qk"
    )
    group = args.n_heads // args.n_kv_heads
    ours = torch.einsum("qhd,khd->hqk", q.double(), k.repeat_interleave(group, dim=1).double())
    theirs = torch.einsum("qhd,khd->hqk", theirs_q, theirs_k.repeat_interleave(group, dim=1))
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * ours.abs().max().item())
    assert ours.abs().max().item() > 1.0


def test_an_existing_output_is_refused(written, awkward_folder):
    folder, _, _ = written
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        CONVERT["main"]([str(awkward_folder), str(folder / "f32.gguf")])


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_CONVERTER"), reason="$LLAMA_CPP_CONVERTER is not set")
def test_the_file_equals_what_llama_cpps_converter_writes(written, awkward_folder, tmp_path):
    """Run llama.cpp's convert_hf_to_gguf.py on the same folder (given tokenizer_config.json as our
    exports have it) and compare every tensor and every field both files hold."""
    theirs_path = tmp_path / "theirs.gguf"
    subprocess.run(
        [sys.executable, os.environ["LLAMA_CPP_CONVERTER"], str(awkward_folder), "--outtype", "f32"]
        + ["--outfile", str(theirs_path)],
        check=True,
        timeout=300,
    )
    ours, theirs = gguf.GGUFReader(written[0] / "f32.gguf"), gguf.GGUFReader(theirs_path)
    ours_tensors, theirs_tensors = tensors(ours), tensors(theirs)
    assert sorted(ours_tensors) == sorted(theirs_tensors)
    for name, (kind, values) in theirs_tensors.items():
        assert ours_tensors[name][0] == kind and np.array_equal(ours_tensors[name][1], values), name
    shared = [key for key in theirs.fields if key in ours.fields and not key.startswith(("general.", "GGUF."))]
    assert {key: field(ours, key) for key in shared} == {key: field(theirs, key) for key in shared}
    assert Tokenizer(awkward_folder / "tokenizer.model").vocab_size == 320
