"""The network a run trains, built by the builder its ``network_module`` names.

A builder injects its layers into the UNet (and the text encoders the run trains) and returns a
``Network``: everything the run set-up and the step loop need from it, so each kind of network is
one builder here (``lycoris.kohya``: lycoris_builder.py) instead of more lines in the loop."""

from __future__ import annotations

from typing import Callable

from ..errors import TrainerError
from .built_network import Network
from .dropouts import add_dropouts
from .lycoris_modules import detach as detach_lycoris
from .kohya_format import fold_alpha, to_kohya_names
from .names import kohya_name, unet_file_name
from .network import ADAPTER, add_lora_modules, autocast_lora_inputs, drop_adapter, lora_state_dict
from .network_weights import NetworkWeights
from .targets import network_spec, text_encoder_targets, unet_targets


def trained_text_encoders(model, config) -> list[str]:
    """The pipeline attributes of the text encoders that get a LoRA (CLIP families only)."""
    if not config.trains_text_encoder or model.family.name == "kolors":
        return []
    return [name for name in model.family.text_parts if name.startswith("text_encoder")]


def build_lora(model, config, text_encoders: list[str], log=None) -> Network:
    """kohya's ``networks.lora`` through peft: LoRA on the modules kohya's LoRANetwork picks
    (targets.py; ``network_args`` target / conv_dim / conv_alpha / dropouts / LoRA+), on the CLIP
    attention/MLP linears of ``text_encoders``, started from ``network_weights`` when given."""
    unet, family = model.unet, model.family
    spec = network_spec(config, family.name)
    start = NetworkWeights.read(config.network_weights, family.name, unet.config) if config.network_weights else None
    unet_modules = {} if config.network_train_text_encoder_only else unet_targets(unet, spec)
    te_modules = {name: text_encoder_targets(getattr(model.pipe, name), spec.dim, spec.alpha) for name in text_encoders}
    if start and config.dim_from_weights:  # kohya's create_network_from_weights: the file's modules and ranks
        unet_modules = start.modules("unet", unet)
        te_modules = {name: start.modules(name, getattr(model.pipe, name)) for name in text_encoders}
    alphas: dict[tuple[str, str], float] = {}
    groups, params, trainable = [], [], {}

    def add(component: str, module, modules: dict, lr: float, loraplus: float | None):
        nonlocal params
        detach_lycoris(module, ADAPTER)  # a LyCORIS network trained on this model before
        if not modules:
            drop_adapter(module, ADAPTER)
            module.requires_grad_(False)
            return
        found = add_lora_modules(module, modules, ADAPTER)
        groups.extend(lr_groups(module, found, lr, loraplus))
        trainable.update({f"{component}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
        alphas.update({(component, path): alpha for path, (_, alpha) in modules.items()})
        params = params + found

    add("unet", unet, unet_modules, config.unet_lr or config.learning_rate, spec.loraplus_unet)
    te_lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
    for name in text_encoders:
        encoder = getattr(model.pipe, name)
        add(name, encoder, te_modules[name], te_lr, spec.loraplus_text_encoder)
        encoder.train()
    if not params:
        raise TrainerError("This run trains nothing: network_train_text_encoder_only needs a text encoder to "
                           "train (set text_encoder_lr; Kolors' ChatGLM stays frozen).")
    if log:
        convs = sum(1 for r, a in unet_modules.values() if (r, a) == (spec.conv_dim, spec.conv_alpha) and spec.conv_dim)
        log(f"networks.lora, target {spec.target}: {len(unet_modules)} UNet modules"
            + (f" ({convs} 3x3 convs at conv_dim {spec.conv_dim})" if convs else "")
            + f", {sum(len(m) for m in te_modules.values()) if text_encoders else 0} text-encoder modules, "
            f"dim {spec.dim}, alpha {spec.alpha:g} (network_args target=kohya|attention chooses the set)")
    if start:
        start.load_into(model, text_encoders, log)
    add_dropouts([unet] + [getattr(model.pipe, n) for n in text_encoders], ADAPTER,
                 spec.dropout, spec.rank_dropout, spec.module_dropout)
    return Network(params, groups, trainable, list(text_encoders),
                   lambda: _lora_state_dicts(model, text_encoders, alphas, bool(unet_modules)),
                   lambda autocast: autocast_lora_inputs(autocast, unet))


def remove_network(model) -> None:
    """Take the run's network (peft or LyCORIS) off the model's UNet and text encoders."""
    for module in (model.unet, *model.text_encoders()):
        detach_lycoris(module, ADAPTER)
        drop_adapter(module, ADAPTER)


def lr_groups(module, params: list, lr: float, loraplus: float | None) -> list[dict]:
    """One optimizer group at ``lr``; with LoRA+ the up weights (lora_B) get their own at lr x ratio."""
    if not loraplus:
        return [{"params": params, "lr": lr}]
    ups = {id(p) for n, p in module.named_parameters() if p.requires_grad and ".lora_B." in n}
    return [{"params": [p for p in params if id(p) not in ups], "lr": lr},
            {"params": [p for p in params if id(p) in ups], "lr": lr * loraplus}]


def _lora_state_dicts(model, text_encoders: list[str], alphas: dict, has_unet: bool) -> tuple[dict, dict]:
    unet, family = model.unet, model.family
    tensors, diffusers = {}, {}
    if has_unet:
        state = lora_state_dict(unet, ADAPTER)
        tensors = to_kohya_names(state, lambda path: unet_file_name(path, family.name, unet.config),
                                 lambda path: alphas[("unet", path)])
        diffusers = fold_alpha(state, "unet", lambda path: alphas[("unet", path)])
    for name in text_encoders:
        state = lora_state_dict(getattr(model.pipe, name), ADAPTER)
        tensors.update(to_kohya_names(state, lambda path: kohya_name(name, path, family.name),
                                      lambda path: alphas[(name, path)]))
        diffusers.update(fold_alpha(state, name, lambda path: alphas[(name, path)]))
    return tensors, diffusers


def build_lycoris(model, config, text_encoders: list[str], log=None) -> Network:
    """``lycoris.kohya``: LyCORIS's algorithms (lycoris_builder.py; imported when used)."""
    from .lycoris_builder import build_lycoris as build

    return build(model, config, text_encoders, log)


NETWORK_BUILDERS: dict[str, Callable[..., Network]] = {"networks.lora": build_lora, "lycoris.kohya": build_lycoris}


def network_builder(network_module: str) -> Callable[..., Network]:
    """The builder for ``network_module``; any other name stops the run before anything loads."""
    try:
        return NETWORK_BUILDERS[network_module]
    except KeyError:
        known = ", ".join(f'"{name}"' for name in NETWORK_BUILDERS)
        raise TrainerError(f'network_module "{network_module}" is not one this trainer builds: use {known}.') \
            from None
