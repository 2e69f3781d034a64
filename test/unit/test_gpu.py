"""CUDA checks, skipped without a GPU; scripts/gpu_suite.sh runs them on a GPU machine."""

import math

import pytest
import torch
from helpers import REPO_ROOT

from tinytitan.config import load_config
from tinytitan.models.llama import FLAVORS, ModelArgs, build_model
from tinytitan.train import train

pytestmark = pytest.mark.gpu


def test_float32_logits_on_cuda_match_cpu():
    args = ModelArgs(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=999, ffn_hidden_dim=344, max_seq_len=256)
    torch.manual_seed(0)
    cpu_model = build_model(args, "cpu")
    cuda_model = build_model(args, "cuda")
    cuda_model.load_state_dict(cpu_model.state_dict())
    tokens = torch.randint(0, args.vocab_size, (3, 200))
    with torch.no_grad():
        difference = (cuda_model(tokens.cuda()).cpu() - cpu_model(tokens)).abs().max().item()
    assert difference < 1e-4


def test_attention_runs_on_the_flash_backend_with_grouped_heads():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = build_model(FLAVORS["debug"], "cuda")
    tokens = torch.randint(0, 4096, (2, 512), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        expected = model(tokens, tokens).float()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot take these inputs
            flash = model(tokens, tokens).float()
    assert abs(flash.item() - expected.item()) < 1e-2


def test_tinyllama_starts_near_the_uniform_loss_in_bf16():
    torch.manual_seed(0)
    model = build_model(FLAVORS["tinyllama_1b"], "cuda")
    tokens = torch.randint(0, 32000, (1, 2048), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert abs(loss.item() - math.log(32000)) < 0.5
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_compiled_debug_training_on_cuda(tmp_path, corpus_cache):
    records = train(
        load_config(
            [
                f"--job.config_file={REPO_ROOT / 'train_configs/debug_model.toml'}",
                f"--job.dump_folder={tmp_path}",
                f"--data.cache_dir={corpus_cache}",
                "--training.steps=30",
                "--metrics.log_freq=10",
                "--compile.enable",
                "--lr_scheduler.warmup_steps=5",
            ]
        )
    )
    assert records[-1]["loss"] < records[0]["loss"] - 2.0
    assert all(math.isfinite(r["grad_norm"]) for r in records)


def test_triton_kernels_train_like_the_torch_references_on_cuda(tmp_path, corpus_cache):
    def losses(kernels):
        records = train(
            load_config(
                [
                    f"--job.config_file={REPO_ROOT / 'train_configs/debug_model.toml'}",
                    f"--job.dump_folder={tmp_path}",
                    f"--data.cache_dir={corpus_cache}",
                    "--training.steps=5",
                    "--lr_scheduler.warmup_steps=4",
                    "--metrics.log_freq=1",
                    "--training.mixed_precision=fp32",
                    f"--model.kernels={kernels}",
                    "--validation.eval_freq=0",
                ]
            )
        )
        return [r["loss"] for r in records]

    assert losses("triton") == pytest.approx(losses("torch"), rel=1e-4)


def test_one_gpu_trains_bfloat16_fsdp_parameters_like_several():
    """One process on one GPU makes a group of one and trains through FSDP, as N GPUs do."""
    from torch.distributed.tensor import DTensor

    from tinytitan.parallel import Precision, parallel_env, parallelize

    config = load_config(["--training.device=cuda"])
    with parallel_env(config.training.device, config.parallelism) as env:
        torch.manual_seed(0)
        model = build_model(FLAVORS["debug"], env.device)
        precision = Precision.of(config.training.mixed_precision, env.device)  # auto: bfloat16 on CUDA
        parallelize(model, env, precision, config.activation_checkpoint, config.compile, config.parallelism)
        in_forward = []
        model.layers["0"].feed_forward.w1.register_forward_hook(lambda m, i, o: in_forward.append(m.weight.dtype))
        tokens = torch.randint(0, 4096, (2, 256), device="cuda")
        with precision.autocast():
            model(tokens, tokens).backward()
        weight = model.layers["0"].feed_forward.w1.weight
        assert in_forward == [torch.bfloat16]
        assert isinstance(weight, DTensor) and weight.dtype == weight.grad.dtype == torch.float32


def test_profiling_on_cuda_writes_a_trace_with_kernels_and_a_memory_snapshot(tmp_path, corpus_cache):
    import json
    import pickle

    from tinytitan.run_folder import RunFolder

    records = train(
        load_config(
            [
                f"--job.config_file={REPO_ROOT / 'train_configs/debug_model.toml'}",
                f"--job.dump_folder={tmp_path}",
                f"--data.cache_dir={corpus_cache}",
                "--training.steps=4",
                "--metrics.log_freq=2",
                "--lr_scheduler.warmup_steps=1",
                "--profiling.enable",
                "--profiling.start_step=3",
                "--profiling.steps=1",
                "--profiling.with_memory",
            ]
        )
    )
    folder = RunFolder(tmp_path / "debug").profile(3)
    trace = json.loads((folder / "rank0.trace.json").read_text())
    assert any(event.get("cat") == "kernel" for event in trace["traceEvents"])  # GPU kernels, from CUDA events
    snapshot = pickle.loads((folder / "rank0.memory.pickle").read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"]
    assert {"time/data_ms", "time/forward_backward_ms", "time/optimizer_ms"} <= set(records[-1])  # CUDA events
    assert records[-1]["time/forward_backward_ms"] > 0
