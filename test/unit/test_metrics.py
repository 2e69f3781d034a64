import pytest
import torch

from tinytitan.metrics import MetricsLogger, flops_per_token, memory_gib, peak_flops, peak_flops_of
from tinytitan.models.llama import FLAVORS, Transformer, count_parameters


def test_tinyllama_costs_7_31_gflop_per_token_at_2048():
    args = FLAVORS["tinyllama_1b"]
    with torch.device("meta"):
        model = Transformer(args)
    without_embedding = count_parameters(model, exclude_embedding=True)
    assert without_embedding == count_parameters(model) - args.vocab_size * args.dim
    flops = flops_per_token(args, without_embedding, 2048)
    assert flops == 6 * without_embedding + 12 * 22 * 2048 * 2048
    assert flops / 1e9 == pytest.approx(7.31, abs=0.005)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_matches_device_names(name, peak):
    assert peak_flops_of(name) == peak


def test_cpu_has_no_peak_and_reports_resident_memory():
    assert peak_flops(torch.device("cpu")) is None
    assert 0.01 < memory_gib(torch.device("cpu")) < 64


def test_scalars_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path)
    for step, loss in [(1, 5.5), (2, 4.25), (7, 3.0)]:
        logger.log(step, {"loss": loss, "lr": 1e-3 * step})
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lr"}
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 5.5), (2, 4.25), (7, 3.0)]
