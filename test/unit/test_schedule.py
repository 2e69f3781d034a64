import math

import pytest
import torch

from tinytitan.config import ConfigError, LRScheduler, load_config
from tinytitan.optim import build_lr_scheduler, lr_at_step

PEAK, MIN = 4e-4, 4e-5


def schedule(decay="cosine", warmup=2000):
    return LRScheduler(warmup_steps=warmup, decay_type=decay, min_lr=MIN)


def test_warmup_peak_and_end_values():
    config, total = schedule(), 10_000
    assert lr_at_step(1, PEAK, config, total) == pytest.approx(PEAK / 2000)
    assert lr_at_step(1000, PEAK, config, total) == pytest.approx(PEAK / 2)
    assert lr_at_step(2000, PEAK, config, total) == pytest.approx(PEAK)
    assert lr_at_step(6000, PEAK, config, total) == pytest.approx((PEAK + MIN) / 2)  # cosine midpoint
    assert lr_at_step(total, PEAK, config, total) == pytest.approx(MIN)
    assert lr_at_step(total + 500, PEAK, config, total) == pytest.approx(MIN)


def test_cosine_against_its_formula_and_monotonic():
    config, total = schedule(warmup=10), 100
    lrs = [lr_at_step(s, PEAK, config, total) for s in range(1, total + 1)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a > b for a, b in zip(lrs[9:-1], lrs[10:]))
    for s in (11, 37, 64, 99):
        expected = MIN + (PEAK - MIN) * (1 + math.cos(math.pi * (s - 10) / 90)) / 2
        assert lrs[s - 1] == pytest.approx(expected)


def test_linear_and_constant_decay():
    total = 110
    assert lr_at_step(60, PEAK, schedule("linear", 10), total) == pytest.approx((PEAK + MIN) / 2)
    assert lr_at_step(110, PEAK, schedule("linear", 10), total) == pytest.approx(MIN)
    assert lr_at_step(110, PEAK, schedule("constant", 10), total) == pytest.approx(PEAK)
    assert lr_at_step(1, PEAK, schedule("cosine", 0), total) < PEAK  # no warmup: decay from step 1


def test_scheduler_drives_the_optimizer_step_by_step():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=PEAK)
    config, total = schedule(warmup=5), 20
    scheduler = build_lr_scheduler(optimizer, config, total)
    for step in range(1, total + 1):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_at_step(step, PEAK, config, total))
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
def test_a_config_is_accepted_exactly_when_its_schedule_reaches_the_peak_and_min_lr(decay):
    for steps in range(1, 7):
        for warmup in range(0, 9):
            flags = [f"--training.steps={steps}", f"--lr_scheduler.warmup_steps={warmup}"]
            flags += [f"--lr_scheduler.decay_type={decay}", f"--optimizer.lr={PEAK}", f"--lr_scheduler.min_lr={MIN}"]
            lrs = [lr_at_step(step, PEAK, schedule(decay, warmup), steps) for step in range(1, steps + 1)]
            reaches_peak = warmup == 0 or PEAK in lrs  # no warmup: the peak is where it starts
            reaches_min = decay == "constant" or lrs[-1] == pytest.approx(MIN)
            try:
                load_config(flags)
                accepted = True
            except ConfigError:
                accepted = False
            assert accepted == (reaches_peak and reaches_min), (steps, warmup, lrs)
