"""Any Hugging Face Llama in, trained and out, without naming a flavor: random models made by
transformers itself (not by our adapter), one per shape option, imported with convert_hf_to_dcp.py
(logits equal transformers'), trained 3 steps by run_train.sh from --checkpoint.initial_load_path
alone, exported, converted back with convert_dcp_to_hf.py and loaded by transformers offline (logits
equal ours); HF -> DCP -> HF without training is bit-exact."""

import importlib.util
import shutil

import pytest
import torch
from helpers import ONE_THREAD, REPO_ROOT, run_command

from tinytitan.data.builtin_corpus import corpus_folder
from tinytitan.model_files import TOKENIZER_FILE, load_model

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

STEPS = 3
BASE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
    vocab_size=4096, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=64, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)  # fmt: skip
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}  # fmt: skip
# (config fields over BASE, ranks that train it)
VARIANTS = {
    "tied": ({"tie_word_embeddings": True}, 2),
    "rope_linear": ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, 1),
    "rope_llama3": ({"rope_theta": 500000.0, "rope_scaling": LLAMA3}, 1),
    "theta_500000": ({"rope_theta": 500000.0}, 1),
    "head_dim_24": ({"head_dim": 24}, 1),
    "one_kv_head": ({"num_key_value_heads": 1}, 1),
    "kv_heads_equal_heads": ({"num_key_value_heads": 4}, 1),
    "odd_vocabulary": ({"vocab_size": 4099}, 1),  # the built-in corpus tokenizer has 4096 pieces
}


def script(name: str):
    """A script's main(argv), called in this process (a subprocess would import torch again)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def hf_files(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(safetensors_torch.load_file(str(file)))
    return tensors


def tokens(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))


def assert_same_logits(ours, theirs, vocab_size: int):
    with torch.no_grad():
        expected, got = theirs(tokens(vocab_size)).logits, ours(tokens(vocab_size))
    assert (got - expected).abs().max().item() <= 1e-4
    assert expected.abs().max().item() > 0.1  # not a comparison of near-zero tensors


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_transformers_model_converts_trains_without_a_flavor_and_exports(variant, tmp_path, corpus_cache):
    fields, ranks = VARIANTS[variant]
    config = transformers.LlamaConfig(**{**BASE, **fields})
    torch.manual_seed(0)
    original = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger than transformers' init, so that the logits are far from zero
        for name, param in original.named_parameters():
            param.uniform_(0.5, 1.5) if name.endswith("norm.weight") else param.normal_(0.0, 0.3)
    hf_in, dcp_in = tmp_path / "hf", tmp_path / "dcp"
    original.save_pretrained(hf_in)
    shutil.copyfile(corpus_folder(corpus_cache) / TOKENIZER_FILE, hf_in / TOKENIZER_FILE)  # the data's, for export
    to_dcp, to_hf = script("convert_hf_to_dcp"), script("convert_dcp_to_hf")

    to_dcp([str(hf_in), str(dcp_in)])
    ours, _ = load_model(dcp_in, "cpu", torch.float32)
    assert_same_logits(ours, original, config.vocab_size)
    to_hf([str(dcp_in), str(tmp_path / "back"), "--dtype", "fp32"])  # HF -> DCP -> HF, untrained: bit-exact
    back, saved = hf_files(tmp_path / "back"), hf_files(hf_in)
    assert set(back) == set(saved) and all(torch.equal(back[name], saved[name]) for name in saved)

    result = run_command(
        "./run_train.sh", f"--job.dump_folder={tmp_path / 'runs'}", "--job.name=run",
        "--model.flavor=",  # no flavor (the debug recipe's default too): the checkpoint's shape
        f"--checkpoint.initial_load_path={dcp_in}", "--checkpoint.export_dtype=float32",
        f"--data.cache_dir={corpus_cache}",
        f"--training.steps={STEPS}", "--training.seq_len=32", f"--training.global_batch_tokens={64 * ranks}",
        "--training.micro_batch_size=2", "--lr_scheduler.warmup_steps=1", "--validation.eval_freq=0",
        "--data.num_workers=0", "--metrics.enable_tensorboard=false",
        env={"NGPU": str(ranks), **ONE_THREAD},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"model of the arguments in {dcp_in / 'model_args.json'}" in result.stdout
    export = tmp_path / "runs" / "run" / "checkpoints" / f"step-{STEPS}-model"
    to_hf([str(export), str(tmp_path / "out"), "--dtype", "fp32"])
    trained, _ = load_model(export, "cpu", torch.float32)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True).eval()
    assert loaded.config.tie_word_embeddings == config.tie_word_embeddings
    assert_same_logits(trained, loaded, config.vocab_size)
    changed = hf_files(tmp_path / "out")
    assert not torch.equal(changed["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])  # it trained
