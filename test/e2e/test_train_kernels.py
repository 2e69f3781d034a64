"""The debug model trained with the Triton kernels as with the torch references. In this process,
but slow on CPU: the kernels run under the Triton interpreter."""

import pytest
from helpers import debug_config

from tinytitan.train import train


def test_triton_kernels_train_like_the_torch_references(tmp_path, corpus_cache):
    """Under the Triton interpreter (set by conftest on CPU): a few steps of the debug model."""

    def run(kernels):
        records = train(
            debug_config(
                tmp_path,
                corpus_cache,
                "--training.steps=3",
                "--lr_scheduler.warmup_steps=2",
                "--training.seq_len=32",
                "--training.micro_batch_size=4",
                "--training.global_batch_tokens=128",
                "--data.num_workers=0",
                "--validation.eval_freq=0",
                f"--model.kernels={kernels}",
            )
        )
        return [record["loss"] for record in records], [record["grad_norm"] for record in records]

    torch_losses, torch_norms = run("torch")
    triton_losses, triton_norms = run("triton")
    assert triton_losses == pytest.approx(torch_losses, rel=1e-5)
    assert triton_norms == pytest.approx(torch_norms, rel=1e-4)
    assert torch_losses[2] != torch_losses[0]
