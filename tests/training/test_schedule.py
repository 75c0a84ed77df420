import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from whisper_lora.errors import ConfigError
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.schedule import BudgetSchedule


def _factors(sched, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = sched(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    return out


def test_step_decay_is_the_classic_linear_schedule():
    ours = _factors(lambda o: torch.optim.lr_scheduler.LambdaLR(o, BudgetSchedule(3, 20, 15.0, "steps")), 25)
    ref = _factors(lambda o: get_linear_schedule_with_warmup(o, 3, 20), 25)
    assert ours == pytest.approx(ref, abs=1e-12)
    assert ours[0] == 0 and max(ours) == 1.0 and ours[20:] == [0.0] * 5


def test_budget_decay_follows_the_clock_when_time_runs_out_first():
    s = BudgetSchedule(warmup_steps=2, max_steps=1000, max_minutes=10.0)
    s.minutes = 0.0
    assert s(1) == 0.5 and s(2) == pytest.approx(1 - 0 / 998)
    s.minutes = 5.0  # half the minutes, few steps: the clock decides
    assert s(10) == pytest.approx(0.5)
    s.minutes = 9.9
    assert s(20) == pytest.approx(0.01)
    s.minutes = 12.0
    assert s(30) == 0.0
    s.minutes = 1.0  # the steps run out first: the steps decide
    assert s(900) == pytest.approx(1 - 898 / 998)
    assert BudgetSchedule(2, 1000, None)(500) == pytest.approx(1 - 498 / 998)  # no time cap: steps only


def test_lr_decay_is_validated():
    with pytest.raises(ConfigError, match=r"lr_decay='cosine'; valid: budget, steps"):
        TrainConfig(language="sw", data="x", lr_decay="cosine")


def test_without_a_step_cap_the_minutes_alone_decide():
    s = BudgetSchedule(2, None, 10.0)
    s.minutes = 5.0
    assert s(100_000) == pytest.approx(0.5)


def test_max_steps_defaults_to_300_unless_a_time_budget_is_given():
    assert TrainConfig(language="sw", data="x").max_steps == 300
    assert TrainConfig(language="sw", data="x", max_minutes=15).max_steps is None  # the budget decides
    assert TrainConfig(language="sw", data="x", max_minutes=15, max_steps=50).max_steps == 50  # first to end
