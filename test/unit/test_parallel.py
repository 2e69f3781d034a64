"""Training through parallelize() in this process: compiled blocks and activation checkpointing
against eager, and FSDP on a group of one."""

import pytest
import torch
import torch.distributed as dist
from helpers import DOCUMENT_MASKING, small_run
from torch.distributed.tensor import DTensor

from tinytitan.config import load_config
from tinytitan.models.llama import FLAVORS, build_model
from tinytitan.parallel import Precision, parallel_env, parallelize
from tinytitan.train import train


@pytest.mark.parametrize("attention", [(), DOCUMENT_MASKING], ids=["sdpa", "flex-documents"])
def test_compiled_blocks_give_the_losses_of_eager(tmp_path, corpus_cache, attention):
    def run(*extra):
        config = load_config(
            small_run(
                tmp_path,
                corpus_cache,
                "--training.steps=3",
                "--lr_scheduler.warmup_steps=2",
                "--metrics.enable_tensorboard=false",
                "--training.micro_batch_size=8",
                *attention,
                *extra,
            )
        )
        return [record["loss"] for record in train(config) if "loss" in record]

    eager, compiled = run(), run("--compile.enable")
    assert compiled == pytest.approx(eager, rel=1e-4)
    if attention:
        return  # activation checkpointing is the same whatever the attention
    selective = run("--activation_checkpoint.mode=selective", "--activation_checkpoint.selective_every=2")
    assert selective == pytest.approx(eager, rel=1e-6)


def test_one_process_trains_bfloat16_fsdp_parameters_like_several_ranks():
    """A single process makes a group of one and trains through FSDP too: bfloat16 parameters in the
    forward, float32 sharded weights and gradients, whatever the number of ranks."""
    config = load_config(["--training.mixed_precision=bfloat16", "--training.device=cpu"])
    with parallel_env(config.training.device, config.parallelism) as env:
        assert env.world_size == 1 and dist.is_initialized()
        torch.manual_seed(0)
        model = build_model(FLAVORS["debug"], env.device)
        precision = Precision.of(config.training.mixed_precision, env.device)
        parallelize(model, env, precision, config.activation_checkpoint, config.compile, config.parallelism)
        in_forward = []
        model.layers["0"].feed_forward.w1.register_forward_hook(lambda m, i, o: in_forward.append(m.weight.dtype))
        tokens = torch.randint(0, 4096, (2, 16))
        with precision.autocast():
            model(tokens, tokens).backward()
        weight = model.layers["0"].feed_forward.w1.weight
        assert in_forward == [torch.bfloat16]
        assert isinstance(weight, DTensor) and weight.dtype == weight.grad.dtype == torch.float32
    assert not dist.is_initialized()
