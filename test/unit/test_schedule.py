import math

import pytest
import torch

from tinytitan.config import ConfigError, LRScheduler, load_config
from tinytitan.optim import build_lr_scheduler, lr_at_step

PEAK, MIN = 4e-4, 4e-5


def schedule(decay="cosine", warmup=2000, **wsd):
    return LRScheduler(warmup_steps=warmup, decay_type=decay, min_lr=MIN, **wsd)


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


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_warms_up_holds_the_peak_then_decays_by_its_formula(shape):
    total, warmup, decay = 1000, 50, 200
    config = schedule("wsd", warmup, decay_steps=decay, decay_shape=shape)
    lrs = {s: lr_at_step(s, PEAK, config, total) for s in range(1, total + 1)}
    assert lrs[25] == pytest.approx(PEAK / 2) and lrs[warmup] == PEAK
    assert all(lrs[s] == PEAK for s in range(warmup, total - decay + 1))  # stable, the peak exactly
    for s in (801, 850, 913, 999):
        progress = (s - 800) / decay
        fall = progress if shape == "linear" else math.sqrt(progress)
        assert lrs[s] == pytest.approx(MIN + (PEAK - MIN) * (1 - fall))
    assert lrs[total] == pytest.approx(MIN) and lr_at_step(total + 9, PEAK, config, total) == pytest.approx(MIN)
    by_fraction = schedule("wsd", warmup, decay_fraction=0.2, decay_shape=shape)  # 0.2 x 1000 = 200 steps
    assert all(lr_at_step(s, PEAK, by_fraction, total) == lrs[s] for s in lrs)


def test_a_cooldown_run_computes_the_same_lrs_as_the_uninterrupted_decay():
    """The stable run of 1000 steps stopped at step 800 (its decay's start); the cooldown is a run of
    its own: no warmup, 200 steps of decay."""
    whole = schedule("wsd", 50, decay_steps=200, decay_shape="1-sqrt")
    cooldown = schedule("wsd", 0, decay_steps=200, decay_shape="1-sqrt")
    assert [lr_at_step(800 + s, PEAK, whole, 1000) for s in range(1, 201)] == [
        lr_at_step(s, PEAK, cooldown, 200) for s in range(1, 201)
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr_scheduler.decay_steps=10", "--lr_scheduler.warmup_steps=11"], "decay_steps 10: expected at most"),
        (["--lr_scheduler.decay_fraction=1.5"], "decay_fraction = 1.5: expected at most 1"),
        (["--lr_scheduler.decay_fraction=0.9", "--lr_scheduler.warmup_steps=3"], r"0.9 x 20 = 18: expected at most"),
    ],
)
def test_a_wsd_decay_that_does_not_fit_after_the_warmup_is_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["--training.steps=20", "--lr_scheduler.warmup_steps=3", "--lr_scheduler.decay_type=wsd", *flags])
    fits = ["--lr_scheduler.warmup_steps=10", "--lr_scheduler.decay_steps=10"]  # no stable phase: accepted
    load_config(["--training.steps=20", "--lr_scheduler.decay_type=wsd", *fits])


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the LambdaLR of a checkpoint
def test_a_resumed_schedule_is_the_new_configs_at_the_saved_step(capsys):
    """Saved at step 30 of a 50-step cosine run; resumed with 120 steps, another peak and WSD: every
    resumed step's lr is the new formula, whatever the checkpoint's optimizer and schedule held."""
    param = torch.nn.Parameter(torch.zeros(3))
    old = torch.optim.AdamW([param], lr=PEAK)
    saved_schedule = build_lr_scheduler(old, schedule(warmup=5), 50)
    for _ in range(30):
        param.grad = torch.ones(3)
        old.step()
        saved_schedule.step()
    new_peak, new_config = 2 * PEAK, schedule("wsd", 5, decay_steps=40)
    new = torch.optim.AdamW([param], lr=new_peak)
    resumed = build_lr_scheduler(new, new_config, 120)
    new.load_state_dict(old.state_dict())  # the checkpoint's lr and initial_lr come with it...
    resumed.load_state_dict(saved_schedule.state_dict())
    lines = capsys.readouterr().out
    for key in ("training.steps 50 -> 120", "optimizer.lr 0.0004 -> 0.0008", "lr_scheduler.decay_type cosine -> wsd"):
        assert f"resume: {key}: the lr follows the config's schedule from step 31" in lines
    for step in range(31, 121):  # ...but the schedule sets the new one
        assert new.param_groups[0]["lr"] == lr_at_step(step, new_peak, new_config, 120)
        param.grad = torch.ones(3)
        new.step()
        resumed.step()
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(old, lambda completed: 1.0)  # a checkpoint of before
    for _ in range(7):
        lambda_lr.step()
    resumed.load_state_dict({"last_epoch": lambda_lr.state_dict()["last_epoch"]})
    assert resumed.completed == 7 and new.param_groups[0]["lr"] == lr_at_step(8, new_peak, new_config, 120)


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
