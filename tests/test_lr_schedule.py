"""trainer.train.lr_schedule: kohya's lr_scheduler names give the curves kohya's get_scheduler_fix
gives (diffusers' get_scheduler for the names it shares; each other schedule's defining shape),
lr_scheduler_type / lr_scheduler_args, and kohya's refusals; a warmup longer than the run is run."""

import pytest
import torch
from diffusers.optimization import get_scheduler

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.train.lr_schedule import build_lr_scheduler, lr_curve, schedule_for
from trainer.train.optim import build_optimizer


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(4))], lr=lr)


def _curve(name, steps=100, warmup=0, log=None, **kw):
    opt = _optimizer()
    return lr_curve(build_lr_scheduler(name, opt, warmup, steps, log=log or (lambda m: None), **kw), steps)


def _diffusers_curve(name, steps=100, warmup=0, **kw):
    return lr_curve(get_scheduler(name, _optimizer(), num_warmup_steps=warmup, num_training_steps=steps, **kw), steps)


@pytest.mark.parametrize("name,warmup,kw,theirs", [
    ("constant", 0, {}, {}),
    ("constant_with_warmup", 10, {}, {}),
    ("linear", 0.1, {}, {}),
    ("cosine", 5, {}, {}),
    ("cosine_with_restarts", 5, {"num_cycles": 3}, {"num_cycles": 3}),
    ("polynomial", 5, {"power": 2.0}, {"power": 2.0}),
    ("piecewise_constant", 0, {"scheduler_args": ["step_rules='1:20,0.5:50,0.1'"]}, {"step_rules": "1:20,0.5:50,0.1"}),
])
def test_names_diffusers_has_give_diffusers_curves(name, warmup, kw, theirs):
    ours = _curve(name, warmup=warmup, **kw)
    count = int(warmup * 100) if isinstance(warmup, float) else warmup
    assert ours == _diffusers_curve(name, warmup=count, **theirs)
    assert len(set(ours)) > 1 or name == "constant"


def _maxima(curve):
    """Indices where the lr reaches a peak (starts of cosine cycles)."""
    return [i for i in range(len(curve)) if (i == 0 or curve[i] > curve[i - 1]) and
            (i + 1 == len(curve) or curve[i] >= curve[i + 1]) and curve[i] > 0.99]


def test_cosine_with_restarts_has_num_cycles_maxima():
    for cycles in (1, 3, 5):
        curve = _curve("cosine_with_restarts", num_cycles=cycles)
        assert len(_maxima(curve)) == cycles, (cycles, _maxima(curve))
    # SeaArt's spelling is accepted
    assert _curve("Cosine with Restart", num_cycles=3) == _curve("cosine_with_restarts", num_cycles=3)


def test_warmup_ratio_reaches_peak_at_ten_percent():
    curve = _curve("cosine", steps=100, warmup=0.1)
    assert curve[0] == 0.0 and curve[9] < 1.0 and curve[10] == pytest.approx(1.0)
    assert all(curve[i] < curve[i + 1] for i in range(10))
    assert _curve("cosine", steps=100, warmup=10) == curve  # count == ratio * total
    assert _curve("constant_with_warmup", steps=100, warmup=0.25)[25:] == [1.0] * 75


def test_inverse_sqrt_decays_as_one_over_root_of_the_step():
    curve = _curve("inverse_sqrt", warmup=10)  # timescale defaults to the warmup, as in kohya
    assert curve[10] == pytest.approx(1.0) and curve[40] == pytest.approx(0.5) and curve[90] == pytest.approx(1 / 3)
    slow = _curve("inverse_sqrt", warmup=10, timescale=40)  # lr_scheduler_timescale
    assert slow[10] == pytest.approx(1.0) and slow[60] == pytest.approx(2 / 3)  # sqrt(40 / (60 + 40 - 10))


def test_cosine_with_min_lr_ends_at_the_floor_kohya_halving_num_cycles():
    curve = _curve("cosine_with_min_lr", warmup=0, min_lr_ratio=0.1)
    assert curve[0] == 1.0 and curve[50] == pytest.approx(0.55) and min(curve) >= 0.1 - 1e-9
    assert all(a >= b for a, b in zip(curve, curve[1:]))  # num_cycles 1 -> kohya's 0.5: half a wave
    full = _curve("cosine_with_min_lr", num_cycles=2, min_lr_ratio=0.2)  # a whole wave: back up at the end
    assert full[50] == pytest.approx(0.2) and full[99] > 0.99


def test_warmup_stable_decay_holds_then_decays_over_lr_decay_steps():
    curve = _curve("warmup_stable_decay", warmup=10, decay_steps=0.3, min_lr_ratio=0.05)
    assert curve[10] == pytest.approx(1.0) and set(curve[10:70]) == {1.0}  # stable until 100 - 30
    assert all(a > b for a, b in zip(curve[70:], curve[71:]))
    assert curve[-1] == pytest.approx(0.05, abs=0.01)
    assert _curve("warmup_stable_decay", warmup=10, decay_steps=30, min_lr_ratio=0.05) == curve


def test_lr_scheduler_args_reach_the_schedule():
    plain, ended = _curve("polynomial"), _curve("polynomial", scheduler_args=["lr_end=0.5"])
    assert plain[-1] < 0.02 and ended[-1] == pytest.approx(0.505)


def test_lr_scheduler_type_builds_any_scheduler_class():
    by_name = _curve("constant", scheduler_type="CosineAnnealingLR", scheduler_args=["T_max=50"])
    theirs = torch.optim.lr_scheduler.CosineAnnealingLR(_optimizer(), T_max=50)
    assert by_name == lr_curve(theirs, 100)
    step = _curve("cosine", scheduler_type="torch.optim.lr_scheduler.StepLR",
                  scheduler_args=["step_size=10", "gamma=0.5"])
    assert step[9] == 1.0 and step[10] == 0.5 and step[25] == 0.25
    with pytest.raises(TrainerError, match="takes no lr_warmup_steps"):
        _curve("constant", warmup=10, scheduler_type="CosineAnnealingLR", scheduler_args=["T_max=50"])
    with pytest.raises(TrainerError, match="pip install no-such-pkg"):
        _curve("constant", scheduler_type="no_such_pkg.Schedule")
    with pytest.raises(TrainerError, match="lr_scheduler_type StepLR"):
        _curve("constant", scheduler_type="StepLR")  # its step_size is missing


def test_a_warmup_longer_than_the_run_runs_with_a_warning():
    logs = []
    curve = _curve("cosine", steps=20, warmup=100, log=logs.append)
    assert all(a < b for a, b in zip(curve, curve[1:])) and curve[-1] == pytest.approx(0.19)
    assert any("lr_warmup_steps (100) is not below the run's 20 steps" in m for m in logs)
    # the config kohya accepts trains here too (schedule_for reads the config's lr_* settings)
    config = TrainConfig(lr_scheduler="constant_with_warmup", lr_warmup_steps=100)
    assert lr_curve(schedule_for(config, _optimizer(), 20, log=logs.append), 20)[-1] == pytest.approx(0.19)


def test_schedule_shapes():
    const = _curve("constant")
    assert set(const) == {1.0}
    lin = _curve("linear")
    assert lin[0] == 1.0 and lin[50] == pytest.approx(0.5) and lin[-1] == pytest.approx(0.01)
    cos = _curve("cosine")
    assert cos[50] == pytest.approx(0.5, abs=1e-6) and cos[25] > lin[25]
    quad = _curve("polynomial", power=2.0)
    assert quad[50] == pytest.approx(0.25, abs=1e-3) and quad[50] < lin[50]


def test_scheduler_errors_say_what_to_change():
    opt = _optimizer()
    with pytest.raises(TrainerError, match="constant_with_warmup"):  # kohya refuses it too
        build_lr_scheduler("constant", opt, 10, 100)
    with pytest.raises(TrainerError, match="cosine_with_restarts"):
        build_lr_scheduler("cosine_annealing_warm", opt, 0, 100)
    with pytest.raises(TrainerError, match="3-5"):
        build_lr_scheduler("cosine_with_restarts", opt, 0, 100, num_cycles=0)
    with pytest.raises(TrainerError, match="validation metric"):
        build_lr_scheduler("reduce_lr_on_plateau", opt, 0, 100)
    with pytest.raises(TrainerError, match="lr_scheduler_min_lr_ratio"):
        build_lr_scheduler("cosine_with_min_lr", opt, 0, 100)
    with pytest.raises(TrainerError, match="step_rules"):
        build_lr_scheduler("piecewise_constant", opt, 0, 100)
    with pytest.raises(TrainerError, match="lr_decay_steps"):
        build_lr_scheduler("warmup_stable_decay", opt, 0, 100, decay_steps=1.5)


def test_schedule_free_keeps_its_lr_and_adafactor_its_own_schedule():
    logs = []
    sf = build_optimizer("AdamWScheduleFree", [torch.nn.Parameter(torch.zeros(4))], 1e-3, ["warmup_steps=5"], "cpu")
    curve = lr_curve(build_lr_scheduler("cosine", sf, 10, 100, log=logs.append), 100)
    assert set(curve) == {1e-3} and any("schedule-free" in m and "warmup_steps" in m for m in logs)
    ada = build_optimizer("Adafactor", [torch.nn.Parameter(torch.zeros(4))], 1e-3, [], "cpu", log=lambda m: None)
    schedule = build_lr_scheduler("cosine", ada, 0, 100, log=logs.append, initial_lr=1e-3)
    assert type(schedule).__name__ == "AdafactorSchedule" and schedule.get_last_lr()[0] == 1e-3
    with pytest.raises(TrainerError, match="warms up by itself"):
        build_lr_scheduler("constant", ada, 10, 100)
    with pytest.raises(TrainerError, match="relative_step=True"):
        build_lr_scheduler("adafactor", _optimizer(), 0, 100)
