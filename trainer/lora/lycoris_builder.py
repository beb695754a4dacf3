"""``network_module = "lycoris.kohya"``: LoCon, LoHa, LoKr, DoRA and OFT through LyCORIS's modules.

The modules (init, forward, dropouts, weight files) are LyCORIS's own, so a TOML gives the file
kohya + LyCORIS gives; which modules get one is LyCORIS's preset walk (lycoris_targets.py) and
their names are our kohya names (SGM names for SDXL, as kohya writes)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError
from . import lycoris_modules as lm
from .built_network import Network
from .lycoris_spec import lycoris_spec
from .lycoris_targets import preset_dict, preset_targets
from .names import _config_key, _diffusers_to_ldm, kohya_name, unet_file_name
from .network import ADAPTER, drop_adapter

UNET_ONLY_CLASSES_SDXL = ("TimestepEmbedding",)  # not in kohya's SDXL UNet (see lycoris_targets)


def lycoris_unet_targets(unet, spec, family: str, preset: dict | None = None) -> dict[str, tuple[int, float]]:
    preset = preset or preset_dict(spec.preset)
    name_of, skip = None, ()
    if family == "sdxl":
        ldm = _diffusers_to_ldm(_config_key(unet.config))
        name_of, skip = (lambda path: ldm.get(path, path)), UNET_ONLY_CLASSES_SDXL
    return preset_targets(unet, preset, "unet", spec.dim, spec.alpha, spec.conv_dim, spec.conv_alpha, name_of, skip)


def lycoris_text_encoder_targets(encoder, spec, preset: dict | None = None) -> dict[str, tuple[int, float]]:
    return preset_targets(encoder, preset or preset_dict(spec.preset), "text_encoder", spec.dim, spec.alpha,
                          spec.conv_dim, spec.conv_alpha)


def build_lycoris(model, config, text_encoders: list[str], log=None) -> Network:
    """The run's LyCORIS network on the UNet (and ``text_encoders``), started from
    ``network_weights`` when given."""
    from .lycoris_weights import LycorisWeights

    lm.quiet_kernels()
    unet, family = model.unet, model.family
    spec = lycoris_spec(config)
    start = LycorisWeights.read(config.network_weights, family.name, unet.config) if config.network_weights else None
    roots = {"unet": unet} | {name: getattr(model.pipe, name) for name in text_encoders}
    for root in roots.values():  # a fresh network, whatever was trained on this model before
        drop_adapter(root, ADAPTER)
        lm.detach(root, ADAPTER)
        root.requires_grad_(False)
    from_file = _from_file(start, roots, spec, log) if start else {}
    preset = preset_dict(spec.preset)  # a preset file is read once
    targets = {"unet": {} if config.network_train_text_encoder_only
               else lycoris_unet_targets(unet, spec, family.name, preset)}
    for name in text_encoders:
        targets[name] = lycoris_text_encoder_targets(roots[name], spec, preset)
    groups, params, trainable, counts = [], [], {}, {}
    lrs = {"unet": config.unet_lr or config.learning_rate}
    te_lr = config.text_encoder_lr if config.text_encoder_lr is not None else config.learning_rate
    for component, root in roots.items():
        made = dict(from_file.get(component, {}))
        if not (start and config.dim_from_weights):  # the config's set; the file's modules where it has them
            for path, (rank, alpha) in (targets.get(component) or {}).items():
                name = unet_file_name(path, family.name, unet.config) if component == "unet" \
                    else kohya_name(component, path, family.name)
                fresh = lm.new_module(spec, name, root.get_submodule(path), rank, alpha)
                if name in made:  # as kohya loads a file into the network it built: same shapes
                    _same_shapes(made[name], fresh, name, start.path)
                else:
                    made[name] = fresh
        counts[component] = len(made)
        if not made:
            continue
        holder = lm.attach(root, ADAPTER, made)
        holder.to(device=next(root.parameters()).device)
        holder.requires_grad_(True)
        found = list(holder.parameters())
        for p in found:
            p.data = p.data.float()
        trainable.update({f"{component}.{n}": p for n, p in holder.named_parameters()})
        ratio = spec.loraplus_unet if component == "unet" else spec.loraplus_text_encoder
        groups.extend(_lr_groups(holder, lrs.get(component, te_lr), ratio))
        params += found
        if component != "unet":
            root.train()
    if not params:
        raise TrainerError("This run trains nothing: the preset matched no module of the models it trains "
                           f"(preset {spec.preset}); use preset=attn-mlp or full.")
    if log:
        te_count = sum(counts.get(n, 0) for n in text_encoders)
        log(f"lycoris.kohya {spec.algo}{' + DoRA' if spec.dora else ''}, preset {spec.preset}: "
            f"{counts.get('unet', 0)} UNet modules, {te_count} text-encoder modules, dim {spec.dim}, "
            f"alpha {spec.alpha:g}"
            + (f", conv {spec.conv_dim}/{spec.conv_alpha:g}" if spec.conv_dim and preset.get("enable_conv", True)
               else "")
            + f", {sum(p.numel() for p in params):,} parameters")
        for warning in comfyui_notes(spec):
            log(warning)
        if spec.dora and spec.kwargs.get("wd_on_out", True):
            log("note: DoRA on the output axis (LyCORIS's default): ComfyUI (up to at least 2026-08) applies "
                "it with the norm of the original weight, not the trained one; add wd_on_output=False to "
                "network_args for a DoRA ComfyUI applies exactly (docs/adapters.md).")
    return Network(params, groups, trainable, list(text_encoders),
                   lambda: _state_dicts(roots), lambda autocast: autocast)


def comfyui_notes(spec) -> list[str]:
    """Settings whose files ComfyUI (a125cd84) applies differently from how they trained."""
    notes = []
    if spec.module == "diag-oft" and spec.kwargs.get("constraint"):
        notes.append("note: OFT with constraint: LyCORIS stores alpha = constraint but limits the rotation by "
                     "constraint x channels, ComfyUI by alpha, so the file looks different in ComfyUI; leave "
                     "constraint unset for files ComfyUI applies as trained.")
    if spec.module == "lokr" and spec.use_tucker:
        notes.append("note: LoKr with use_tucker writes lokr_t2 for the 3x3 convs, which ComfyUI fails to apply "
                     "(it logs an error and skips those modules); drop use_tucker for files ComfyUI applies fully.")
    return notes


def _same_shapes(loaded, fresh, name: str, path) -> None:
    shapes = lambda module: {k: tuple(v.shape) for k, v in module.state_dict().items()}  # noqa: E731
    if shapes(loaded) != shapes(fresh):
        raise TrainerError(f"network_weights: module {name} in {Path(path).name} does not have the shapes this "
                           "network gives it (another dim, factor or preset): set dim_from_weights = true to take "
                           "the file's, or the network_dim / network_args it was trained with.")


def _from_file(start, roots: dict, spec, log) -> dict[str, dict]:
    """The file's modules, rebuilt from its tensors (its ranks, alphas and scales as saved); the
    file must hold the algorithm this run trains."""
    from .lycoris_weights import file_algorithms

    modules = start.build(roots)
    want = ("lora" if spec.module == "locon" else spec.module) + ("+dora" if spec.dora else "")
    found = file_algorithms(modules)
    if found and found != {want}:
        raise TrainerError(f"network_weights: {Path(start.path).name} holds {', '.join(sorted(found))} modules, this "
                           f"run trains {want}: set network_args algo (and dora_wd) to the file's algorithm to "
                           "continue it, or train a new one without network_weights.")
    for parts in modules.values():
        for module in parts.values():  # the run's dropouts (LyCORIS's reader makes modules without)
            module.rank_dropout, module.module_dropout = spec.rank_dropout, spec.module_dropout
    if log:
        log(f"network_weights: {sum(len(p) for p in modules.values())} {want} modules loaded from "
            f"{Path(start.path).name}" + ("" if modules else " (none of them is in this model)"))
    return modules


def _lr_groups(holder, lr: float, ratio: float | None) -> list[dict]:
    """LyCORIS's LoRA+: parameters named lora_up at lr x ratio, the rest at lr."""
    named = list(holder.named_parameters())
    if not ratio:
        return [{"params": [p for _, p in named], "lr": lr}]
    return [group for group in ({"params": [p for n, p in named if "lora_up" not in n], "lr": lr},
                                {"params": [p for n, p in named if "lora_up" in n], "lr": lr * ratio})
            if group["params"]]


def _state_dicts(roots: dict) -> tuple[dict, None]:
    """The trained modules as LyCORIS writes them (its own state dict: hada_*, lokr_*, oft_blocks,
    dora_scale, alpha); no diffusers layout exists for these."""
    tensors = {}
    for root in roots.values():
        holder = lm.adapters(root).get(ADAPTER)
        if holder is not None:
            tensors.update({k: v.detach().clone() for k, v in holder.state_dict().items()})
    return tensors, None
