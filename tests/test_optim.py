"""trainer.train.optim: each optimizer builds and steps; args change behaviour; lr curves per schedule."""

import builtins
import sys

import pytest
import torch

from trainer.errors import TrainerError
from trainer.train import optim as optim_mod
from trainer.train.optim import build_lr_scheduler, build_optimizer, lr_curve, parse_optimizer_args


def _params(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(size, generator=g)) for _ in range(n)]


def _one_step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    return [(p.detach() - b) for p, b in zip(params, before)]


def test_optimizer_args_parsing_kohya_style():
    assert parse_optimizer_args(["weight_decay=0.1", "betas=(0.9,0.99)", "nesterov=True", "decouple=true"]) == {
        "weight_decay": 0.1, "betas": (0.9, 0.99), "nesterov": True, "decouple": True}
    # kohya_ss GUI stores one space-separated string
    assert parse_optimizer_args("weight_decay=0.1 betas=(0.9, 0.99)") == {"weight_decay": 0.1, "betas": (0.9, 0.99)}
    assert parse_optimizer_args({"eps": 1e-6}) == {"eps": 1e-6}
    with pytest.raises(TrainerError, match="key=value"):
        parse_optimizer_args(["weight_decay"])
    with pytest.raises(TrainerError, match="not a number"):
        parse_optimizer_args(["betas=(0.9,"])


@pytest.mark.parametrize("name,cls_name", [("AdamW", "AdamW"), ("adamw", "AdamW"), ("Lion", "Lion"),
                                           ("lion", "Lion"), ("Prodigy", "Prodigy"), ("Adafactor", "Adafactor"),
                                           ("SGD", "SGD"), ("SGDNesterov", "SGD")])
def test_each_optimizer_builds_and_moves_parameters(name, cls_name):
    params = _params()
    lr = 1.0 if name.lower() == "prodigy" else 1e-3
    opt = build_optimizer(name, params, lr, [], "cpu", log=lambda m: None)
    assert type(opt).__name__ == cls_name
    deltas = _one_step(opt, params)
    assert all(d.abs().sum() > 0 for d in deltas)


def test_optimizer_args_reach_the_optimizer_and_change_the_step():
    # weight decay: with zero gradient, AdamW's decoupled decay alone shrinks the weights
    p1, p2 = _params(1, seed=1), _params(1, seed=1)
    plain = build_optimizer("AdamW", p1, 0.1, ["weight_decay=0.0"], "cpu")
    decayed = build_optimizer("AdamW", p2, 0.1, ["weight_decay=0.5"], "cpu")
    assert decayed.param_groups[0]["weight_decay"] == 0.5
    for opt, ps in ((plain, p1), (decayed, p2)):
        ps[0].grad = torch.zeros_like(ps[0])
        opt.step()
    assert torch.allclose(p1[0], _params(1, seed=1)[0])
    assert p2[0].abs().sum() < p1[0].abs().sum()


def test_param_groups_keep_their_own_lr():
    a, b = _params(2)
    opt = build_optimizer("AdamW", [{"params": [a], "lr": 1e-2}, {"params": [b]}], 1e-4, None, "cpu")
    assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-4]


def test_sgd_nesterov_from_args():
    logs = []
    opt = build_optimizer("SGD", _params(), 0.1, ["nesterov=True"], "cpu", log=logs.append)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    assert any("momentum=0.9" in m for m in logs)
    opt = build_optimizer("sgdnesterov", _params(), 0.1, ["momentum=0.5"], "cpu")
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.5
    plain = build_optimizer("SGD", _params(), 0.1, [], "cpu")
    assert not plain.param_groups[0]["nesterov"] and plain.param_groups[0]["momentum"] == 0


def test_adafactor_defaults_follow_the_lr_and_relative_step_is_optional():
    opt = build_optimizer("Adafactor", _params(), 1e-3, [], "cpu")
    g = opt.param_groups[0]
    assert (g["scale_parameter"], g["relative_step"], g["warmup_init"], g["lr"]) == (False, False, False, 1e-3)
    logs = []
    rel = build_optimizer("Adafactor", _params(), 1e-3, ["warmup_init=True"], "cpu", log=logs.append)
    assert rel.param_groups[0]["relative_step"] and rel.param_groups[0]["lr"] is None
    sched = build_lr_scheduler("constant", rel, 0, 10, log=logs.append)
    assert type(sched).__name__ == "AdafactorSchedule"


def test_prodigy_warns_about_a_small_lr_and_lion_about_an_adamw_lr():
    logs = []
    build_optimizer("prodigy", _params(), 1e-4, [], "cpu", log=logs.append)
    assert any("about 1.0" in m for m in logs)
    logs.clear()
    build_optimizer("Prodigy", _params(), 1.0, [], "cpu", log=logs.append)
    assert logs == []
    build_optimizer("Lion", _params(), 1e-4, [], "cpu", log=logs.append)
    assert any("1/10" in m for m in logs)


def test_adamw8bit_falls_back_when_bitsandbytes_cannot_import(monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_bnb)
    logs = []
    opt = build_optimizer("AdamW8bit", _params(), 1e-3, ["weight_decay=0.01", "min_8bit_size=16"], "cpu", log=logs.append)
    assert type(opt) is torch.optim.AdamW
    assert any("AdamW8bit is not available" in m and "torch AdamW" in m for m in logs)
    assert any("min_8bit_size" in m for m in logs)


def test_adamw8bit_falls_back_when_the_kernel_fails(monkeypatch):
    monkeypatch.setattr(optim_mod, "_bnb_adamw8bit_works", lambda device: "no CUDA kernel (test)")
    logs = []
    opt = build_optimizer("adamw8bit", _params(), 1e-3, [], "cuda", log=logs.append)
    assert type(opt) is torch.optim.AdamW and "no CUDA kernel" in logs[0]
    # a device that does not exist here also falls back rather than crashing
    monkeypatch.undo()
    if not torch.cuda.is_available():
        assert optim_mod._bnb_adamw8bit_works("cuda") is not None


def test_unsupported_and_unknown_optimizers_name_the_alternative():
    with pytest.raises(TrainerError, match="use AdamW8bit"):
        build_optimizer("PagedAdamW8bit", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="AdamW, AdamW8bit, Lion"):
        build_optimizer("Adam9000", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="do not fit AdamW"):
        build_optimizer("AdamW", _params(), 1e-3, ["bogus=1"], "cpu")


# -- lr schedules -----------------------------------------------------------------------------------
def _curve(name, steps=100, warmup=0, **kw):
    opt = torch.optim.SGD(_params(1), lr=1.0)
    return lr_curve(build_lr_scheduler(name, opt, warmup, steps, **kw), steps)


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
    opt = torch.optim.SGD(_params(1), lr=1.0)
    with pytest.raises(TrainerError, match="constant_with_warmup"):
        build_lr_scheduler("constant", opt, 10, 100)
    with pytest.raises(TrainerError, match="below the total steps"):
        build_lr_scheduler("cosine", opt, 100, 100)
    with pytest.raises(TrainerError, match="cosine_with_restarts"):
        build_lr_scheduler("cosine_annealing_warm", opt, 0, 100)
    with pytest.raises(TrainerError, match="3-5"):
        build_lr_scheduler("cosine_with_restarts", opt, 0, 100, num_cycles=0)


def test_adamw8bit_uses_bitsandbytes_where_it_runs():
    if optim_mod._bnb_adamw8bit_works("cpu") is not None:
        pytest.skip("bitsandbytes 8-bit kernels do not run on this CPU")
    logs = []
    opt = build_optimizer("AdamW8bit", _params(size=8192), 1e-3, [], "cpu", log=logs.append)
    assert type(opt).__module__.startswith("bitsandbytes") and logs == []


def test_adamw_takes_the_fused_kernel_unless_optimizer_args_choose():
    fused = build_optimizer("AdamW", _params(), 1e-3, [], "cpu")
    assert fused.defaults["fused"] is True
    chosen = build_optimizer("AdamW", _params(), 1e-3, ["foreach=True"], "cpu")
    assert not chosen.defaults.get("fused") and chosen.defaults["foreach"] is True
    # same update as the per-tensor loop, to float rounding
    loop = build_optimizer("AdamW", _params(), 1e-3, ["fused=False", "foreach=False"], "cpu")
    for a, b in zip(_one_step(fused, fused.param_groups[0]["params"]), _one_step(loop, loop.param_groups[0]["params"])):
        assert torch.allclose(a, b, atol=1e-7)
