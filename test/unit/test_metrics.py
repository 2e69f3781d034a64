import pytest
import torch

from tinytitan.divergence import SpikeDetector
from tinytitan.metrics import MetricsLogger, Progress, duration, flops_per_token, memory_gib, peak_flops, peak_flops_of
from tinytitan.models.llama import FLAVORS, Transformer, count_parameters
from tinytitan.step_timer import StepTimer


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


def test_progress_estimates_the_time_left_from_the_recent_steps(monkeypatch):
    clock = iter([100.0, 130.0, 131.0, 132.0])  # start; a slow first interval, then 1 s per 10 steps
    monkeypatch.setattr("tinytitan.metrics.time.perf_counter", lambda: next(clock))
    progress = Progress(first_step=1, last_step=1000, window=2)
    assert progress.report(10, 5120) == {"tokens_seen": 5120, "elapsed_s": 30.0, "eta_s": 3.0 * 990}
    progress.report(20, 10240)
    late = progress.report(30, 15360)  # the slow start has left the window: 0.1 s per step
    assert late["eta_s"] == pytest.approx(0.1 * 970) and late["elapsed_s"] == 32.0
    assert [duration(s) for s in (6, 245, 3723)] == ["6s", "4m05s", "1h02m03s"]


def test_step_timer_splits_the_wall_time_into_phases(monkeypatch):
    clock = iter([0.0, 0.5, 2.5, 3.0, 3.0, 4.0, 10.0, 10.25, 12.25, 12.75])
    monkeypatch.setattr("tinytitan.step_timer.time.perf_counter", lambda: next(clock))
    timer = StepTimer(torch.device("cpu"))
    for _ in range(2):
        timer.start_step()
        for phase in ("data", "forward_backward", "optimizer"):
            timer.mark(phase)
        if _ == 0:
            with timer.phase("checkpoint"):
                pass
    assert timer.report() == {
        "time/data_ms": 375.0,  # (0.5 + 0.25) / 2 steps
        "time/forward_backward_ms": 2000.0,
        "time/optimizer_ms": 500.0,
        "time/checkpoint_s": 1.0,  # 3 -> 4; 4 -> 10 is between steps, not counted
    }


def test_a_loss_far_above_the_recent_ones_is_a_spike():
    detector = SpikeDetector(stddevs=3)
    assert [detector.check(loss) for loss in (5.0, 5.1, 4.9, 5.0, 5.1)] == [None] * 5
    assert detector.check(5.2) is None
    assert "loss spike: 9.0000" in detector.check(9.0)
    assert SpikeDetector(stddevs=0).check(100.0) is None


def test_wandb_without_the_package_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    from tinytitan.errors import UserError
    from tinytitan.wandb_run import WandbRun

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without it gives: ImportError
    with pytest.raises(UserError, match=r"^metrics.enable_wandb = true: the wandb package is not installed"):
        WandbRun(tmp_path / "wandb", "project", "debug", {})
    assert not (tmp_path / "wandb").exists()
