"""LR multipliers of ldm.lr_scheduler against closed forms written out here."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler, LambdaWarmUpCosineScheduler2
from ldm.util import instantiate_from_config
from tests.manifests import REPO_ROOT


def _cosine_closed_form(n, warm, lo, hi, start, end):
    """Straight line start->hi on [0, warm), then hi->lo along a half cosine until `end`."""
    if n < warm:
        return start + (hi - start) * n / warm
    progress = min((n - warm) / (end - warm), 1.0)
    return lo + (hi - lo) * (1 + math.cos(math.pi * progress)) / 2


@pytest.mark.parametrize("n", [0, 1, 50, 99, 100, 101, 550, 999, 1000, 5000])
def test_warm_up_cosine_follows_line_then_half_cosine(n):
    sched = LambdaWarmUpCosineScheduler(warm_up_steps=100, lr_min=0.1, lr_max=2.0, lr_start=0.01, max_decay_steps=1000)
    assert sched(n) == pytest.approx(_cosine_closed_form(n, 100, 0.1, 2.0, 0.01, 1000), rel=1e-12)
    assert sched.last_lr == sched.schedule(n)


def test_warm_up_cosine_hits_its_landmarks():
    sched = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.0, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert sched(0) == 0.0
    assert sched(10) == pytest.approx(1.0)
    assert sched(60) == pytest.approx(0.5)
    assert sched(110) == pytest.approx(0.0, abs=1e-15)
    assert sched(10_000) == pytest.approx(0.0, abs=1e-15)


def _cycles_kwargs():
    return dict(warm_up_steps=[10, 5], f_min=[0.5, 0.0], f_max=[1.0, 2.0], f_start=[0.0, 1.0], cycle_lengths=[100, 50])


@pytest.mark.parametrize("n", [0, 3, 10, 55, 100, 101, 104, 105, 130, 150])
def test_cosine_scheduler2_restarts_each_cycle(n):
    sched = LambdaWarmUpCosineScheduler2(**_cycles_kwargs())
    if n <= 100:  # a step equal to a cycle's cumulative end still belongs to that cycle
        expected = _cosine_closed_form(n, 10, 0.5, 1.0, 0.0, 100)
    else:
        expected = _cosine_closed_form(n - 100, 5, 0.0, 2.0, 1.0, 50)
    assert sched(n) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n", [0, 5, 10, 11, 60, 100, 101, 104, 105, 120, 150])
def test_linear_scheduler_warms_up_then_falls_linearly_over_the_cycle(n):
    sched = LambdaLinearScheduler(**_cycles_kwargs())
    if n <= 100:
        warm, lo, hi, start, length, local = 10, 0.5, 1.0, 0.0, 100, n
    else:
        warm, lo, hi, start, length, local = 5, 0.0, 2.0, 1.0, 50, n - 100
    if local < warm:
        expected = start + (hi - start) * local / warm
    else:
        expected = lo + (hi - lo) * (1 - local / length)
    assert sched(n) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_stable_diffusion_training_schedule_warms_up_to_one_and_stays():
    config = OmegaConf.load(REPO_ROOT / "configs/stable-diffusion/v1-inference.yaml").model.params.scheduler_config
    sched = instantiate_from_config(config)
    assert isinstance(sched, LambdaLinearScheduler)
    assert sched(0) == pytest.approx(1e-6)
    assert sched(5000) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert sched(10_000) == 1.0
    assert sched(10 ** 7) == 1.0


def test_schedule_drives_lambda_lr_as_a_multiplier():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = LambdaLinearScheduler(warm_up_steps=[4], f_min=[1.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[1000])
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=sched.schedule)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        lambda_lr.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_cycle_lists_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one entry per cycle"):
        LambdaWarmUpCosineScheduler2(warm_up_steps=[1, 2], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[10])


def test_step_past_the_last_cycle_raises_a_clear_error():
    sched = LambdaLinearScheduler(warm_up_steps=[1], f_min=[0.0], f_max=[1.0], f_start=[0.0], cycle_lengths=[10])
    with pytest.raises(ValueError, match="past the end of the last cycle"):
        sched(11)


def test_verbosity_interval_prints_the_previous_multiplier(capsys):
    sched = LambdaWarmUpCosineScheduler(warm_up_steps=2, lr_min=0.0, lr_max=1.0, lr_start=0.0,
                                        max_decay_steps=4, verbosity_interval=2)
    sched(1)
    assert capsys.readouterr().out == ""
    sched(2)
    assert "current step: 2, recent lr-multiplier: 0.5" in capsys.readouterr().out
