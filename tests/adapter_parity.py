"""Train each adapter algorithm a few steps on a tiny model and measure, per module of the saved file,
the output change our trained model applies against the change a patched weight gives: the shared
part of tests/test_comfy_adapter_equivalence.py and bench/comfy_adapter_parity.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# label -> TrainConfig fields. LyCORIS ones with conv_dim take preset=full (3x3 convs in).
CONV = ["conv_dim=4", "conv_alpha=2"]
VARIANTS = {
    "LoRA": dict(network="LoRA"),
    "LoCon": dict(network="LoCon"),  # networks.lora with conv_dim
    "LyCORIS-LoCon": dict(network_module="lycoris.kohya", network_args=["algo=locon", *CONV]),
    "LoHa": dict(network="LoHa", network_args=CONV),
    "LoKr": dict(network="LoKr", network_args=CONV),
    "LoKr-f4-both": dict(network="LoKr", network_args=["factor=4", "decompose_both=True", *CONV]),
    # factor 16: w1 is up to 16x16, so dim 4 factorises it too (lokr_w1_a/_b)
    "LoKr-f16-both": dict(network="LoKr", network_args=["factor=16", "decompose_both=True", *CONV]),
    "LoKr-full": dict(network="LoKr", network_args=["full_matrix=True", *CONV]),
    "DoRA": dict(network="DoRA", network_args=CONV),  # input axis (wd_on_output=False)
    "OFT": dict(network="OFT", network_args=CONV),
    # LyCORIS's own DoRA default: output axis, which ComfyUI applies with the original weight's norm
    "DoRA-output-axis": dict(network_module="lycoris.kohya", network_args=["algo=lora", "dora_wd=True", *CONV]),
}
TEXT_ENCODERS = {"sd15": ["text_encoder"], "sdxl": ["text_encoder", "text_encoder_2"], "kolors": []}


def train_variant(model: Path, data: Path, out: Path, family: str, label: str, steps: int = 2):
    """(TrainResult, saved fp32 file) of ``label`` trained ``steps`` steps; a large learning rate so
    adapters that start at the identity (OFT, DoRA, LoRA's zero up) move measurably."""
    from trainer.config import TrainConfig
    from trainer.train.loop import save_outputs, train

    te = {"text_encoder_lr": 1e-2} if TEXT_ENCODERS[family] else {}
    config = TrainConfig(pretrained_model_name_or_path=str(model), train_data_dir=str(data), resolution="64",
                         network_dim=4, network_alpha=2, learning_rate=1e-2, max_train_steps=steps,
                         train_batch_size=2, output_dir=str(out), output_name=f"{family}_{label}",
                         save_precision="float", class_tokens="ltdemo", seed=1, **te, **VARIANTS[label])
    result = train(config)
    return result, save_outputs(result, config)["lora"]


@dataclass
class ModuleDelta:
    name: str
    error: float  # ||ours - theirs|| / ||ours|| , ||ours|| floored at 1e-3 ||base output||
    delta: float  # ||ours|| / ||base output||
    weight_gap: float  # max |their base weight - ours| (0 when the same weight is used)


def base_layer(model, name: str, family: str):
    """(component, module) our file's module ``name`` adapts in the trained ``model``."""
    from trainer.lora.formats import KOHYA, _resolve
    from trainer.lora.names import module_path

    found = _resolve(name, KOHYA, family, model.unet.config)
    if found is None:
        raise AssertionError(f"{name}: no module of the {family} model has this name")
    component, path = found
    root = getattr(model.pipe, component)
    return component, root.get_submodule(module_path(root, path))


def _functional(layer, x, weight):
    if isinstance(layer, torch.nn.Conv2d):
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight)


@torch.no_grad()
def measure(model, family: str, names, patched, seed: int = 0) -> list[ModuleDelta]:
    """For each module ``name``: our trained model's output change on a random input (the module's
    forward with the adapter minus F.linear/F.conv2d with its base weight) against the change
    ``patched(name, base_weight) -> (their_base_weight, their_patched_weight)`` gives."""
    from trainer.lora import lycoris_modules as lm

    for component in ("unet", *TEXT_ENCODERS[family]):  # no dropout while measuring
        root = getattr(model.pipe, component)
        root.eval()
        for holder in lm.adapters(root).values():
            holder.eval()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in sorted(names):
        _, layer = base_layer(model, name, family)
        base = getattr(layer, "base_layer", layer)  # networks.lora wraps the base module (peft)
        w = base.weight
        shape = (2, w.shape[1], 8, 8) if isinstance(base, torch.nn.Conv2d) else (3, w.shape[1])
        x = torch.randn(shape, generator=gen, dtype=w.dtype)
        bias = 0 if base.bias is None else (base.bias.view(-1, 1, 1) if x.ndim == 4 else base.bias)
        y_base = _functional(base, x, w) + bias
        ours = (layer(x) - y_base).double()
        their_w, their_patched = patched(name, w)
        theirs = _functional(base, x.double(), their_patched.double()) - _functional(base, x.double(), their_w.double())
        floor = 1e-3 * y_base.norm().item()  # a module that barely moved: compared absolutely
        rows.append(ModuleDelta(name, ((ours - theirs).norm() / (ours.norm() + floor)).item(),
                                (ours.norm() / y_base.norm()).item(), (their_w - w).abs().max().item()))
    return rows
