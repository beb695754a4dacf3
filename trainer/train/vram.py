"""GPU memory on paper: what a TrainConfig needs on the GPU, item by item, and which options
would make it fit a given amount of free memory.

The estimate follows what loop.train() does, phase by phase, and reports the largest:

* caching: before training, the VAE / text encoders fill the caches. loop.train() does it in
  kohya's order (devices.caching_in_order): each encoder alone on the GPU while it caches, the
  U-Net moved there afterwards. ``unet_on_gpu_while_caching=True`` estimates the other order
  (everything on the GPU at once), to show what the order saves.
* training: U-Net weights, the encoders that were not cached (devices.offload_cached_encoders
  moves cached ones off the GPU), LoRA parameters, their gradients and optimizer states, and the
  working memory of a step: the activations saved for backward, or the live VAE / text encoding
  of the batch, whichever is larger (the encoders run before the U-Net forward and free theirs).
* sampling (with sample_prompts): encoders_on() brings every encoder back, the VAE decodes.

Sizes of weights, LoRA tensors and activations come from the real architectures (vram_meta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..config import TrainConfig, _toml_value
from ..errors import TrainerError
from ..families import get_family
from .optim import normalize_optimizer_type, parse_optimizer_args
from .vram_meta import (TOKENS, count_params, family_parts, inference_peak, text_encoder_lora_profile,
                        unet_profile)

GB = 2**30  # GPU memory is sold and reported in binary gigabytes: an "8 GB" card has 8 x 2^30 bytes
# The CUDA context (driver state, the kernels PyTorch loads lazily, cuBLAS / cuDNN handles and
# workspaces) occupies device memory before the first tensor: 300-500 MiB with PyTorch 2 on
# current GPUs (lazy module loading is the default since CUDA 11.7). We take the upper end.
CUDA_CONTEXT = 512 * 2**20
# PyTorch's caching allocator rounds blocks up (2 MiB granules for large tensors) and fragments
# while a step allocates and frees its working memory; 10% of that working memory covers it.
ALLOCATOR_SLACK = 0.10
DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}
PART_LABELS = {"unet": "U-Net", "vae": "VAE", "text_encoder": "text encoder", "text_encoder_2": "text encoder 2"}


@dataclass
class Item:
    key: str  # stable name: unet, text_encoder, vae, lora, gradients, optimizer, working, context, slack
    label: str
    bytes: int


@dataclass
class VramEstimate:
    family: str
    size: tuple[int, int]  # (width, height)
    batch: int
    phases: dict[str, list[Item]]
    notes: list[str] = field(default_factory=list)

    def phase_total(self, phase: str) -> int:
        return sum(item.bytes for item in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def total(self) -> int:
        return self.phase_total(self.peak_phase)

    def get(self, phase: str, key: str) -> int:
        return sum(item.bytes for item in self.phases.get(phase, []) if item.key == key)

    def describe(self) -> str:
        width, height = self.size
        lines = [f"GPU memory estimate: {get_family(self.family).label} LoRA, {width}x{height}, batch {self.batch} "
                 "(GB = 2^30 bytes)"]
        for phase, items in self.phases.items():
            lines.append(f"{phase:<64}{'GB':>7}")
            lines += [f"  {item.label:<62}{item.bytes / GB:7.2f}" for item in items]
            lines.append(f"  {'total':<62}{self.phase_total(phase) / GB:7.2f}")
        lines.append(f"peak: {self.total / GB:.2f} GB ({self.peak_phase})")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# -- optimizer states -------------------------------------------------------------------------
def optimizer_state_bytes(optimizer_type: str, optimizer_args, shapes, param_bytes: int = 4) -> int:
    """Bytes of the optimizer state for trainable tensors ``shapes`` ((shape, starts at zero) pairs)
    whose values take ``param_bytes`` each (4 fp32, 2 with full_bf16)."""
    name = normalize_optimizer_type(optimizer_type)
    args = parse_optimizer_args(optimizer_args)
    betas = args.get("betas", (0.9, 0.999))
    total = 0
    for shape, zero_init in shapes:
        n = math.prod(shape)
        if name == "AdamW":  # exp_avg, exp_avg_sq like the parameter
            total += 2 * n * param_bytes
        elif name == "AdamW8bit":  # bitsandbytes: uint8 states + an fp32 absmax per 256 values;
            if args.get("optim_bits", 8) == 32 or n < args.get("min_8bit_size", 4096):  # small ones stay fp32
                total += 2 * n * 4
            else:
                total += 2 * (n + 4 * math.ceil(n / 256))
        elif name == "Lion":  # exp_avg
            total += n * param_bytes
        elif name == "Prodigy":  # exp_avg (beta1 > 0), exp_avg_sq, s and p0 (both 1/slice_p; p0 is a
            sliced = math.ceil(n / int(args.get("slice_p", 1)))  # scalar for an all-zero start)
            total += (n * (2 if betas[0] > 0 else 1) + sliced + (0 if zero_init else sliced)) * param_bytes
        elif name == "Adafactor":  # factored second moment for matrices, + exp_avg when beta1 is set
            factored = len(shape) >= 2
            second = math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1] if factored else n
            total += (second + (n if args.get("beta1") is not None else 0)) * param_bytes
        else:  # SGD: a momentum buffer when momentum is set (SGDNesterov: 0.9 by default)
            momentum = args.get("momentum", 0.9 if name == "SGDNesterov" else 0)
            total += n * param_bytes if momentum else 0
    return total


# -- weights -------------------------------------------------------------------------------------
def _kind_of(module) -> str:
    name = type(module).__name__
    return {"ChatGLMModel": "chatglm", "CLIPTextModelWithProjection": "clip_proj"}.get(name, "clip")


def _config_json(module) -> str:
    import json

    config = module.config
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(values, sort_keys=True, default=str)


def _parts(family: str, model, weight_dtype: str) -> dict[str, tuple[str, str, int, int, str]]:
    """{part: (kind, config json, parameter count, weight bytes, dtype name)}: the loaded model's
    own modules when given, else the family's bundled architecture in the trainer's dtypes (the
    loader keeps the VAE in fp32, the rest in the mixed-precision dtype)."""
    out = {}
    if model is not None:
        modules = {"unet": model.unet, "vae": model.vae}
        modules.update({name: getattr(model.pipe, name) for name in model.family.text_parts
                        if name.startswith("text_encoder") and getattr(model.pipe, name, None) is not None})
        for name, module in modules.items():
            kind = name if name in ("unet", "vae") else _kind_of(module)
            tensors = [*module.parameters(), *module.buffers()]
            size = sum(t.numel() * t.element_size() for t in tensors)
            dtype = DTYPE_NAMES.get(str(next(module.parameters()).dtype), "fp16")  # int8 ChatGLM computes in fp16
            out[name] = (kind, _config_json(module), sum(p.numel() for p in module.parameters()), size, dtype)
        return out
    for name, (kind, config) in family_parts(family).items():
        dtype = "fp32" if name == "vae" else weight_dtype
        count = count_params(kind, config)
        out[name] = (kind, config, count, count * (4 if dtype == "fp32" else 2), dtype)
    return out


def resident_bytes(model, device_type: str = "cuda") -> int:
    """Bytes of ``model``'s weights already on a ``device_type`` device (free memory excludes them)."""
    modules = [model.unet, model.vae, *model.text_encoders()]
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers())
               if t.device.type == device_type)


# -- the estimate ----------------------------------------------------------------------------------
def estimate_vram(config: TrainConfig, family: str, model=None, include_context: bool = True,
                  unet_on_gpu_while_caching: bool = False) -> VramEstimate:
    """GPU memory ``config`` needs to train a ``family`` LoRA (see the module doc for the phases).

    ``model``: a LoadedModel whose real weights (dtype, 8-bit ChatGLM, a tiny test model) replace
    the family's bundled architecture. ``include_context``: add the CUDA context (leave it out when
    comparing with free memory measured in a process that already has one, as ComfyUI)."""
    fam = get_family(family).name
    width, height = config.size()
    batch = int(config.train_batch_size)
    autocast = config.mixed_precision if config.mixed_precision in ("fp16", "bf16") else None
    parts = _parts(fam, model, autocast or "fp32")
    tokens = TOKENS[fam]
    texts = [name for name in parts if name.startswith("text_encoder")]
    notes = []

    def weights(name: str) -> Item:
        kind, _, count, size, dtype = parts[name]
        millions = f"{count / 1e6:,.0f}" if count >= 1e7 else f"{count / 1e6:.2f}"
        return Item(name, f"{PART_LABELS.get(name, name)} weights ({dtype}, {millions}M parameters)", size)

    def overheads(working: int) -> list[Item]:
        items = [Item("context", "CUDA context", CUDA_CONTEXT)] if include_context else []
        return items + [Item("slack", f"allocator slack ({ALLOCATOR_SLACK:.0%} of the working memory)",
                             int(ALLOCATOR_SLACK * working))]

    # LoRA tensors and the U-Net's saved activations, from the LoRA-wrapped architecture
    _, unet_config, _, _, unet_dtype = parts["unet"]
    from ..lora.targets import network_spec

    spec = network_spec(config, fam)
    profile = unet_profile(unet_config, tokens, width, height, batch, unet_dtype, autocast,
                           spec.dim, spec.conv_dim, spec.target)
    shapes = list(profile.lora_shapes)
    trains_text = config.trains_text_encoder and fam != "kolors"
    text_saved = 0
    if trains_text:
        for name in texts:
            kind, text_config, _, _, dtype = parts[name]
            text_shapes, saved = text_encoder_lora_profile(kind, text_config, batch, tokens, dtype, autocast,
                                                           int(config.network_dim))
            shapes += text_shapes
            text_saved += saved
    elif config.trains_text_encoder:
        notes.append("Kolors' ChatGLM text encoder stays frozen: text_encoder_lr adds nothing")
    param_bytes = 2 if config.full_bf16 else 4
    lora_count = sum(math.prod(shape) for shape, _ in shapes)
    where = "U-Net + text encoders" if trains_text else "U-Net"
    precision = "bf16" if config.full_bf16 else "fp32"
    lora = [Item("lora", f"LoRA parameters ({where}, {lora_count / 1e6:.1f}M, {precision})", lora_count * param_bytes),
            Item("gradients", "LoRA gradients", lora_count * param_bytes),
            Item("optimizer", f"optimizer states ({normalize_optimizer_type(config.optimizer_type)})",
                 optimizer_state_bytes(config.optimizer_type, config.optimizer_args, shapes, param_bytes))]

    # working memory of a step: activations saved for backward, plus the gradients in flight
    # (about two of the largest activation: the one flowing in and the one flowing out)
    if config.gradient_checkpointing:
        activations = profile.kept + profile.recompute + 2 * profile.largest
        how = "gradient checkpointing"
    else:
        activations = profile.saved + 2 * profile.largest
        how = "no checkpointing"
    working = [Item("working", f"U-Net activations ({how})", activations)]
    if text_saved:
        working.append(Item("working", "text encoder activations (LoRA trains them)", text_saved))
    live = []
    vae_kind, vae_config, _, _, vae_dtype = parts["vae"]
    if not config.cache_latents:
        live.append(("VAE encoding the batch, every step",
                     inference_peak(vae_kind, vae_config, "encode", batch, width, height, vae_dtype)))
    if not config.cache_text_encoder_outputs and not trains_text:
        live.append(("text encoders encoding the batch, every step", _text_peak(parts, texts, batch, tokens)))
    step_working = sum(item.bytes for item in working)
    for label, size in live:
        if size > step_working:  # runs before the U-Net forward, whose activations come after
            working, step_working = [Item("working", f"{label} (> U-Net activations)", size)], size

    training = [weights("unet")]
    if not config.cache_text_encoder_outputs:
        training += [weights(name) for name in texts]
    if not config.cache_latents:
        training.append(weights("vae"))
    phases = {"training": training + lora + working + overheads(step_working)}

    # filling the caches before training
    encode_latents = inference_peak(vae_kind, vae_config, "encode", 1, width, height, vae_dtype) \
        if config.cache_latents else 0
    encode_text = _text_peak(parts, texts, 1, tokens) if config.cache_text_encoder_outputs else 0
    if encode_latents or encode_text:
        if unet_on_gpu_while_caching:
            peak = max(encode_latents, encode_text)
            label = "VAE encoding one image" if encode_latents >= encode_text else "text encoders encoding one caption"
            phases["caching (whole model on the GPU)"] = (
                [weights("unet"), *(weights(name) for name in texts), weights("vae"), Item("working", label, peak)]
                + overheads(peak))
        else:
            if encode_latents:
                phases["caching latents (VAE alone)"] = (
                    [weights("vae"), Item("working", "VAE encoding one image", encode_latents)]
                    + overheads(encode_latents))
            if encode_text:
                phases["caching text (text encoders alone)"] = (
                    [*(weights(name) for name in texts),
                     Item("working", "text encoders encoding one caption", encode_text)] + overheads(encode_text))

    if config.sample_prompts:  # encoders_on(): every part back on the GPU; the VAE decodes one image
        decode = inference_peak(vae_kind, vae_config, "decode", 1, width, height, vae_dtype)
        phases["sampling"] = ([weights("unet"), *(weights(name) for name in texts), weights("vae"), lora[0], lora[2],
                               Item("working", "VAE decoding one image", decode)] + overheads(decode))
    estimate = VramEstimate(fam, (width, height), batch, phases, notes)
    return estimate


def _text_peak(parts: dict, texts: list[str], batch: int, tokens: int) -> int:
    return max((inference_peak(parts[n][0], parts[n][1], "text", batch, 0, 0, parts[n][4], tokens) for n in texts),
               default=0)


# -- what would make it fit ----------------------------------------------------------------------
def _steps(config: TrainConfig, family: str, model) -> list[dict]:
    """Option changes in the order a user would accept them, each a dict of TOML names."""
    steps = []
    if not config.gradient_checkpointing:
        steps.append({"gradient_checkpointing": True})
    if model is None and config.mixed_precision == "no":  # a loaded model keeps its dtype
        steps.append({"mixed_precision": "fp16"})
    if not config.cache_text_encoder_outputs:
        release = family == "kolors" and not config.sample_prompts  # frees ChatGLM's 12 GB of RAM too
        steps.append({"cache_text_encoder_outputs": True} | ({"release_text_encoder": True} if release else {}))
    if normalize_optimizer_type(config.optimizer_type) == "AdamW":
        steps.append({"optimizer_type": "AdamW8bit"})
    if not config.cache_latents:
        steps.append({"cache_latents": True})
    batch, accumulation = int(config.train_batch_size), int(config.gradient_accumulation_steps)
    for smaller in range(batch - 1, 0, -1):  # divisors: the same effective batch through accumulation
        if batch % smaller == 0:
            steps.append({"train_batch_size": smaller, "gradient_accumulation_steps": accumulation * batch // smaller})
    width, height = config.size()
    floor = get_family(family).default_resolution // 2
    scale = 1.0
    while True:
        scale -= 0.125
        w, h = (max(64, round(v * scale / 64) * 64) for v in (width, height))
        if min(w, h) < floor:
            break
        steps.append({"resolution": str(w) if w == h else f"{w},{h}"})
    return steps


def _apply(config: TrainConfig, changes: dict) -> TrainConfig | None:
    """``config`` with ``changes``, or None when the combination is not valid (e.g. caching
    text outputs while shuffle_caption is on)."""
    candidate = replace(config, **changes)
    try:
        candidate.validate()
    except TrainerError:
        return None
    return candidate


def suggest_fit(config: TrainConfig, family: str, free_bytes: int, model=None, include_context: bool = True,
                unet_on_gpu_while_caching: bool = False) -> tuple[VramEstimate, list[tuple[str, object]]]:
    """(estimate, changes): the first set of option changes (TOML name, new value), tried in the
    order of ``_steps``, whose estimate fits ``free_bytes``, pruned of changes it does not need,
    with the estimate for the changed config. No changes when ``config`` fits already; when
    nothing fits, every change that could be made and the estimate with all of them (> free_bytes).
    Changes that would make the config invalid (caching text with shuffled captions...) are skipped."""
    def estimate(changes: dict):
        candidate = _apply(config, changes)
        if candidate is None:
            return None
        return estimate_vram(candidate, family, model, include_context, unet_on_gpu_while_caching)

    def merged(steps: list[dict]) -> dict:
        return {key: value for step in steps for key, value in step.items()}

    current, applied = estimate_vram(config, family, model, include_context, unet_on_gpu_while_caching), []
    for step in _steps(config, family, model):
        if current.total <= free_bytes:
            break
        result = estimate(merged(applied + [step]))
        if result is not None:
            applied, current = applied + [step], result
    if current.total <= free_bytes:  # drop earlier steps the fit does not need
        for step in [s for s in applied if not {"train_batch_size", "resolution"} & set(s)]:
            trial = [s for s in applied if s is not step]
            result = estimate(merged(trial))
            if result is not None and result.total <= free_bytes:
                applied, current = trial, result
    return current, list(merged(applied).items())


def gb(size: int) -> str:
    """A memory size for people: GB with one decimal, MB below 1 GB."""
    return f"{size / GB:.1f} GB" if size >= GB else f"{size / 2**20:.0f} MB"


def format_changes(changes: list[tuple[str, object]]) -> str:
    return ", ".join(f"{key} = {_toml_value(value)}" for key, value in changes)


def vram_warning(config: TrainConfig, family: str, free_bytes: int, model=None,
                 include_context: bool = True) -> str | None:
    """One line when the estimate exceeds ``free_bytes``, naming what would make it fit; else None."""
    first = estimate_vram(config, family, model, include_context)
    if first.total <= free_bytes:
        return None
    fitted, changes = suggest_fit(config, family, free_bytes, model, include_context)
    head = f"estimated {gb(first.total)} ({first.peak_phase}) > {gb(free_bytes)} free GPU memory"
    if fitted.total <= free_bytes:
        return f"{head}: set {format_changes(changes)} to fit (est. {gb(fitted.total)})"
    tried = f" even with {format_changes(changes)}" if changes else ""
    chatglm = fitted.get(fitted.peak_phase, "text_encoder")
    hint = (f"; ChatGLM3 in 8-bit or 4-bit (the loader's chatglm_precision) takes ~6.5 / ~4 GB instead of "
            f"{chatglm / GB:.1f}" if get_family(family).name == "kolors" and chatglm > 8 * GB else "")
    return (f"{head}, and{tried} the estimate is {gb(fitted.total)} ({fitted.peak_phase}): training may run "
            f"out of GPU memory{hint}")
