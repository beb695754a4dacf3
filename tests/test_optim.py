"""trainer.train.optim: every optimizer_type kohya accepts builds and steps; args change behaviour;
missing packages are named; schedule-free optimizers switch to their evaluation weights."""

import builtins
import sys

import pytest
import torch

from trainer.errors import TrainerError
from trainer.train import optim as optim_mod
from trainer.train.optim import (build_optimizer, evaluation_weights, finish_training, normalize_optimizer_type,
                                 parse_optimizer_args)
from trainer.train.optimizers import KINDS


def _params(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(size, generator=g)) for _ in range(n)]


def _one_step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    return [(p.detach() - b) for p, b in zip(params, before)]


def _hide_modules(monkeypatch, *prefixes):
    """Make ``prefixes`` unimportable, as when the package is not installed."""
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.startswith(prefixes):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    for module in list(sys.modules):
        if module.startswith(prefixes):
            monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", guarded)
    import importlib

    real_import_module = importlib.import_module

    def guarded_module(name, *args, **kwargs):
        if name.startswith(prefixes):
            raise ImportError(f"No module named '{name}'")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", guarded_module)


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
    with pytest.raises(TrainerError, match="lr_scheduler_args entry"):
        parse_optimizer_args(["step_rules=1:10,0.1"], "lr_scheduler_args")


# Every name kohya's get_optimizer accepts (its spelling and case-insensitively), a torch.optim
# class by name, and "module.Class" paths; the class each builds, as kohya's (bench/kohya_lr_schedules.py).
KOHYA_NAMES = {
    "AdamW": "torch.optim.adamw.AdamW", "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
    "PagedAdamW": "bitsandbytes.optim.adamw.PagedAdamW", "PagedAdamW8bit": "bitsandbytes.optim.adamw.PagedAdamW8bit",
    "PagedAdamW32bit": "bitsandbytes.optim.adamw.PagedAdamW32bit", "Lion": "lion_pytorch.lion_pytorch.Lion",
    "Lion8bit": "bitsandbytes.optim.lion.Lion8bit", "PagedLion8bit": "bitsandbytes.optim.lion.PagedLion8bit",
    "SGDNesterov": "torch.optim.sgd.SGD", "SGDNesterov8bit": "bitsandbytes.optim.sgd.SGD8bit",
    "DAdaptation": "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
    "DAdaptAdamPreprint": "dadaptation.experimental.dadapt_adam_preprint.DAdaptAdamPreprint",
    "DAdaptAdaGrad": "dadaptation.dadapt_adagrad.DAdaptAdaGrad", "DAdaptAdam": "dadaptation.dadapt_adam.DAdaptAdam",
    "DAdaptAdan": "dadaptation.dadapt_adan.DAdaptAdan",
    "DAdaptAdanIP": "dadaptation.experimental.dadapt_adan_ip.DAdaptAdanIP",
    "DAdaptLion": "dadaptation.dadapt_lion.DAdaptLion", "DAdaptSGD": "dadaptation.dadapt_sgd.DAdaptSGD",
    "Prodigy": "prodigyopt.prodigy.Prodigy", "AdaFactor": "transformers.optimization.Adafactor",
    "RAdamScheduleFree": "schedulefree.radam_schedulefree.RAdamScheduleFree",
    "AdamWScheduleFree": "schedulefree.adamw_schedulefree.AdamWScheduleFree",
    "SGDScheduleFree": "schedulefree.sgd_schedulefree.SGDScheduleFree",
    "SGD": "torch.optim.sgd.SGD", "RAdam": "torch.optim.radam.RAdam", "torch.optim.NAdam": "torch.optim.nadam.NAdam",
    "bitsandbytes.optim.AdEMAMix8bit": "bitsandbytes.optim.ademamix.AdEMAMix8bit",
    "lion_pytorch.Lion": "lion_pytorch.lion_pytorch.Lion",
}


@pytest.mark.parametrize("name", list(KOHYA_NAMES) + ["adamw8bit", "dadaptadam", "adamwschedulefree"])
def test_each_kohya_optimizer_builds_and_moves_parameters(name):
    params = _params(size=4096)  # bitsandbytes keeps tensors below 4096 values in 32-bit
    adaptive = name.lower().startswith(("dadapt", "prodigy"))
    logs = []
    opt = build_optimizer(name, params, 1.0 if adaptive else 1e-3, [], "cpu", log=logs.append)
    expected = KOHYA_NAMES.get(name) or next(v for k, v in KOHYA_NAMES.items() if k.lower() == name)
    assert f"{type(opt).__module__}.{type(opt).__name__}" == expected
    assert not any(line.startswith("warning") for line in logs), logs
    start = [p.detach().clone() for p in params]
    for _ in range(6):  # RAdam(ScheduleFree) holds still for its first steps (rectification)
        _one_step(opt, params)
    assert all(not torch.equal(p, s) for p, s in zip(params, start))
    assert all(torch.isfinite(p).all() for p in params)


def test_the_table_holds_every_name_kohya_accepts():
    kohya = {"AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
             "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad",
             "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "Adafactor",
             "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree"}
    assert kohya <= {k.name for k in KINDS}
    assert normalize_optimizer_type("pagedadamw8bit") == "PagedAdamW8bit"
    assert normalize_optimizer_type("nadam") == "NAdam"
    assert normalize_optimizer_type("pytorch_optimizer.CAME") == "pytorch_optimizer.CAME"  # not imported


@pytest.mark.parametrize("name", ["AdamW8bit", "Lion8bit", "SGDNesterov8bit", "PagedAdamW8bit", "PagedLion8bit"])
def test_8bit_optimizers_keep_their_state_in_8_bits(name):
    params = _params(1, size=8192)
    opt = build_optimizer(name, params, 1e-4, [], "cpu", log=lambda m: None)
    _one_step(opt, params)
    state = opt.state[params[0]]
    assert state["state1"].dtype == torch.uint8 and state["state1"].numel() == 8192
    plain = build_optimizer(name.replace("Paged", "").replace("8bit", ""), _params(1, size=8192), 1e-4, [], "cpu",
                            log=lambda m: None)
    _one_step(plain, plain.param_groups[0]["params"])
    plain_bytes = sum(t.numel() * t.element_size() for t in plain.state[plain.param_groups[0]["params"][0]].values()
                      if torch.is_tensor(t))
    eight_bytes = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    assert eight_bytes < plain_bytes / 3


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
    # a D-Adaptation argument: decouple=True is AdamW-style decay
    dadapt = build_optimizer("DAdaptAdam", _params(), 1.0, ["decouple=True", "weight_decay=0.01"], "cpu")
    assert dadapt.param_groups[0]["decouple"] is True and dadapt.param_groups[0]["weight_decay"] == 0.01


def test_module_class_takes_optimizer_args():
    opt = build_optimizer("torch.optim.RAdam", _params(), 1e-3, ["decoupled_weight_decay=True", "weight_decay=0.1"],
                          "cpu")
    assert type(opt) is torch.optim.RAdam and opt.param_groups[0]["decoupled_weight_decay"] is True
    with pytest.raises(TrainerError, match="do not fit torch.optim.RAdam"):
        build_optimizer("torch.optim.RAdam", _params(), 1e-3, ["bogus=1"], "cpu")


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
    # kohya's SGDNesterov8bit: bitsandbytes' SGD8bit with momentum 0.9 (it takes nesterov=True and,
    # in kohya as here, runs plain momentum: bitsandbytes has no Nesterov kernel)
    eight = build_optimizer("SGDNesterov8bit", _params(), 0.1, [], "cpu", log=lambda m: None)
    assert eight.param_groups[0]["betas"][0] == 0.9


def test_adafactor_follows_kohya_relative_step_by_default_and_the_lr_when_told():
    logs = []
    groups = [{"params": _params(1), "lr": 1e-3}, {"params": _params(1, seed=1), "lr": 5e-4}]
    rel = build_optimizer("Adafactor", groups, 1e-3, [], "cpu", log=logs.append)
    assert rel.param_groups[0]["relative_step"] and rel.param_groups[0]["lr"] is None
    assert all("lr" not in g or g["lr"] is None for g in rel.param_groups)
    assert any("relative_step=False" in m for m in logs)  # says how to get a fixed lr
    fixed = build_optimizer("Adafactor", _params(), 1e-3,
                            ["scale_parameter=False", "relative_step=False", "warmup_init=False"], "cpu")
    g = fixed.param_groups[0]
    assert (g["scale_parameter"], g["relative_step"], g["warmup_init"], g["lr"]) == (False, False, False, 1e-3)
    logs.clear()  # warmup_init needs relative_step: kohya turns it on
    warm = build_optimizer("Adafactor", _params(), 1e-3, ["relative_step=False", "warmup_init=True"], "cpu",
                           log=logs.append)
    assert warm.param_groups[0]["relative_step"] and any("warmup_init" in m for m in logs)


def test_step_size_estimators_warn_about_a_small_lr_and_lion_about_an_adamw_lr():
    logs = []
    build_optimizer("prodigy", _params(), 1e-4, [], "cpu", log=logs.append)
    assert any("about 1.0" in m for m in logs)
    logs.clear()
    build_optimizer("DAdaptLion", _params(), 1e-4, [], "cpu", log=logs.append)
    assert any("DAdaptLion sets the step size itself" in m for m in logs)
    logs.clear()
    build_optimizer("Prodigy", _params(), 1.0, [], "cpu", log=logs.append)
    assert logs == []
    build_optimizer("Lion", _params(), 1e-4, [], "cpu", log=logs.append)
    assert any("1/10" in m for m in logs)


def test_8bit_kinds_fall_back_when_bitsandbytes_cannot_import(monkeypatch):
    _hide_modules(monkeypatch, "bitsandbytes")
    logs = []
    opt = build_optimizer("AdamW8bit", _params(), 1e-3, ["weight_decay=0.01", "min_8bit_size=16"], "cpu",
                          log=logs.append)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.01
    assert any("AdamW8bit is not available" in m and "AdamW (torch.optim.AdamW)" in m for m in logs)
    assert any("min_8bit_size" in m for m in logs)
    assert type(build_optimizer("Lion8bit", _params(), 1e-5, [], "cpu", log=lambda m: None)).__name__ == "Lion"
    nesterov = build_optimizer("SGDNesterov8bit", _params(), 0.1, [], "cpu", log=lambda m: None)
    assert type(nesterov) is torch.optim.SGD and nesterov.param_groups[0]["nesterov"]


def test_8bit_kinds_fall_back_when_the_kernel_fails(monkeypatch):
    monkeypatch.setattr(optim_mod, "_bnb_works", lambda kind, device: "no CUDA kernel (test)")
    logs = []
    opt = build_optimizer("pagedadamw8bit", _params(), 1e-3, [], "cuda", log=logs.append)
    assert type(opt) is torch.optim.AdamW and "no CUDA kernel" in logs[0]
    # a device that does not exist here is reported, not a crash
    monkeypatch.undo()
    if not torch.cuda.is_available():
        assert optim_mod._bnb_works(optim_mod.find_kind("AdamW8bit"), "cuda") is not None


def test_a_missing_package_is_named_with_its_pip_install(monkeypatch):
    with pytest.raises(TrainerError, match="pip install no-such-optimizer-pkg"):
        build_optimizer("no_such_optimizer_pkg.Fast", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="torch.optim has no Nope"):
        build_optimizer("torch.optim.Nope", _params(), 1e-3, [], "cpu")
    _hide_modules(monkeypatch, "dadaptation", "schedulefree", "prodigyopt", "pytorch_optimizer", "prodigyplus")
    with pytest.raises(TrainerError, match="pip install pytorch-optimizer"):
        build_optimizer("pytorch_optimizer.CAME", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="pip install prodigy-plus-schedule-free"):
        build_optimizer("prodigyplus.ProdigyPlusScheduleFree", _params(), 1.0, [], "cpu")
    for name, package in (("DAdaptAdam", "dadaptation"), ("DAdaptation", "dadaptation"),
                          ("AdamWScheduleFree", "schedulefree"), ("Prodigy", "prodigyopt")):
        with pytest.raises(TrainerError, match=f"optimizer_type {name} needs the {package} package: "
                                               f"pip install {package}"):
            build_optimizer(name, _params(), 1.0, [], "cpu")


def test_unknown_and_path_only_names_say_what_to_write():
    with pytest.raises(TrainerError, match='"bitsandbytes.optim.AdEMAMix8bit"'):
        build_optimizer("AdEMAMix8bit", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="AdamW, AdamW8bit, Lion.*module.Class"):
        build_optimizer("Adam9000", _params(), 1e-3, [], "cpu")
    with pytest.raises(TrainerError, match="do not fit AdamW"):
        build_optimizer("AdamW", _params(), 1e-3, ["bogus=1"], "cpu")


def test_schedule_free_trains_in_train_mode_and_samples_with_its_evaluation_weights():
    params = _params(1, size=256)
    opt = build_optimizer("AdamWScheduleFree", params, 1e-2, [], "cpu")
    assert opt.param_groups[0]["train_mode"]  # kohya: train() right after building
    for _ in range(5):
        _one_step(opt, params)
    training = params[0].detach().clone()
    with evaluation_weights(opt):
        assert not opt.param_groups[0]["train_mode"]
        evaluated = params[0].detach().clone()
        with evaluation_weights(opt):  # nested (a snapshot inside an epoch save): stays in eval
            assert torch.equal(params[0], evaluated)
        assert not opt.param_groups[0]["train_mode"]
    assert not torch.equal(training, evaluated)  # the averaged sequence differs from the stepped one
    assert opt.param_groups[0]["train_mode"] and torch.allclose(params[0], training, atol=1e-6)
    finish_training(opt)
    assert torch.allclose(params[0], evaluated, atol=1e-6)
    # the others have no modes: the context changes nothing
    adamw = build_optimizer("AdamW", _params(), 1e-3, [], "cpu")
    with evaluation_weights(adamw):
        pass
    finish_training(adamw)


def test_adamw_takes_the_fused_kernel_unless_optimizer_args_choose():
    fused = build_optimizer("AdamW", _params(), 1e-3, [], "cpu")
    assert fused.defaults["fused"] is True
    chosen = build_optimizer("AdamW", _params(), 1e-3, ["foreach=True"], "cpu")
    assert not chosen.defaults.get("fused") and chosen.defaults["foreach"] is True
    # same update as the per-tensor loop, to float rounding
    loop = build_optimizer("AdamW", _params(), 1e-3, ["fused=False", "foreach=False"], "cpu")
    for a, b in zip(_one_step(fused, fused.param_groups[0]["params"]), _one_step(loop, loop.param_groups[0]["params"])):
        assert torch.allclose(a, b, atol=1e-7)
