"""Before the first step: will everything this run writes fit on its drive?

A drive that fills up at the end used to cost the whole run. What a run writes is known before it
starts: the LoRA (its parameter count x the save precision's bytes, plus the header), one per
epoch save, state folders (fp32 LoRA + optimizer state) with save_state, sample images, and the
disk caches of latents and text-encoder outputs (from the dataset's latent shapes and the text
encoders' sizes), and on the CPU the page files of the cached encoders. A run that cannot fit
stops before it starts, saying what to change.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrainerError
from ..save_fallback import existing_parent

MARGIN_BYTES = 32 * 10**6  # the temp file of an atomic replace, logs, rounding
MARGIN_SHARE = 0.05
SAVE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4, "float": 4}
# optimizer state bytes per trainable fp32 value (AdamW: two moments; Prodigy: four buffers)
OPTIMIZER_BYTES = {"AdamW": 8, "AdamW8bit": 3, "Lion": 4, "Prodigy": 16, "Adafactor": 4, "SGD": 4, "SGDNesterov": 4}
ENTRY_BYTES = 256  # one tensor's entry in a safetensors header or a torch.save archive, with room
TEXT_TOKENS = 256  # Kolors' ChatGLM prompt length; CLIP encoders say theirs (77)


@dataclass
class Need:
    what: str  # "3 epoch saves of 18.0 MB"
    size: int  # bytes
    fix: str = ""  # the setting that makes it smaller


def size_text(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def lora_file_bytes(params, save_precision: str, metadata: dict) -> int:
    """The kohya .safetensors of these LoRA parameters (lora_A/lora_B per module; the file adds an
    alpha per module) at ``save_precision``, metadata included."""
    modules = len(params) // 2
    header = 3 * modules * ENTRY_BYTES + len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    return sum(p.numel() for p in params) * SAVE_BYTES.get(save_precision, 4) + modules * 4 + header


def state_bytes(params, config, steps: int) -> int:
    """One <name>-state folder: the LoRA in fp32, the optimizer state, progress.json (losses, config)."""
    from .optim import normalize_optimizer_type

    numel = sum(p.numel() for p in params)
    per_value = OPTIMIZER_BYTES.get(normalize_optimizer_type(config.optimizer_type), 8)
    if config.full_bf16 or config.full_fp16:
        per_value //= 2
    return numel * (4 + per_value) + 3 * len(params) * ENTRY_BYTES + steps * 24 + 64 * 1024


def save_needs(config, params, family, dataset, buckets, steps: int, world: int = 1) -> list[Need]:
    """What the run writes into output_dir besides the caches."""
    from ..lora.kohya_format import build_metadata
    from ..lora.modelspec import thumbnail_allowance
    from ..sample_prompts import parse_prompt_line
    from .bucketing import steps_per_epoch

    per_epoch = max(1, math.ceil(steps_per_epoch(dataset, buckets, config.train_batch_size * world, world)
                                 / config.gradient_accumulation_steps))
    epochs = math.ceil(steps / per_epoch)
    metadata = build_metadata(config, family, dataset, steps, epochs, time.time(), buckets)
    metadata["modelspec.thumbnail"] = "x" * thumbnail_allowance(config)  # a sample's, or the one named
    lora = lora_file_bytes(params, config.save_precision, metadata)
    needs = [Need(f"the LoRA {size_text(lora)}", lora), Need("loss CSV and chart", steps * 32 + 200_000)]
    every, keep = config.save_every_n_epochs, config.save_last_n_epochs
    saves = (epochs - 1) // every if every else 0  # the last epoch is the final save
    if keep:
        saves = min(saves, keep + 1)  # the newest is written before the oldest is removed
    if saves:
        needs.append(Need(f"{saves} epoch save{'s' if saves > 1 else ''} of {size_text(lora)}", saves * lora,
                          "save fewer epochs (a larger save_every_n_epochs, or save_last_n_epochs)"))
    step_saves = step_state_saves = 0
    if config.save_every_n_steps:  # kohya keeps those of the last save_last_n_steps steps (+ the new one)
        each = config.save_every_n_steps
        step_saves = step_state_saves = steps // each
        if config.save_last_n_steps:
            step_saves = min(step_saves, config.save_last_n_steps // each + 2)
        keep_states = config.save_last_n_steps_state or config.save_last_n_steps
        if keep_states:
            step_state_saves = min(step_state_saves, keep_states // each + 2)
    if step_saves:
        needs.append(Need(f"{step_saves} step save{'s' if step_saves > 1 else ''} of {size_text(lora)}",
                          step_saves * lora, "save fewer steps (a larger save_every_n_steps, or save_last_n_steps)"))
    if config.save_state or config.save_state_on_train_end:
        state = state_bytes(params, config, steps)
        copies = 2 if epochs > 1 and config.save_state else 1  # the new state is complete before the old one goes
        if config.save_state:  # kohya's numbered states beside the epoch and step saves
            epoch_states = (epochs - 1) // every if every else 0
            keep = config.save_last_n_epochs_state or config.save_last_n_epochs
            copies += (min(epoch_states, keep + 1) if keep else epoch_states) + step_state_saves
        needs.append(Need(f"{copies} training state folder{'s' if copies > 1 else ''} of {size_text(state)}",
                          copies * state,
                          "turn off save_state"))
    if config.sample_prompts:
        width, height = config.size()
        events = (1 if config.sample_at_first else 0) + 1  # + the samples after training
        events += steps // config.sample_every_n_steps if config.sample_every_n_steps else 0
        events += epochs // config.sample_every_n_epochs if config.sample_every_n_epochs else 0
        per_event = 0
        for line in config.sample_prompts:
            prompt = parse_prompt_line(line)
            per_event += (prompt.width or width) * (prompt.height or height) * 3 + 4096  # PNG at most raw
        needs.append(Need(f"{events} rounds of sample images", events * per_event,
                          "sample less often (sample_every_n_epochs / sample_every_n_steps)"))
    return needs


def cache_needs(latents_from, text_from, captions: list[str], paged: list) -> list[Need]:
    """The disk-cache files this run still has to write (files already there are reused), and the
    page files of the ``paged`` encoders (on the CPU their weights leave RAM for the run)."""
    needs = []
    size = sum(t.numel() * t.element_size() + 64 for module in paged  # each tensor 64-byte aligned
               for t in [*module.parameters(), *module.buffers()])
    if size:
        needs.append(Need(f"encoder weights paged out of RAM {size_text(size)}", size))
    if latents_from.cache and latents_from.cache_dir:
        missing = [i for i in range(len(latents_from.dataset.items)) if not latents_from._disk_path(i).is_file()]
        size = sum(2 * 4 * math.prod(latents_from.latent_shape(i)) + 4 * ENTRY_BYTES for i in missing)
        if missing:
            needs.append(Need(f"latent cache of {len(missing)} images {size_text(size)}", size,
                              "turn off cache_latents_to_disk (cache_latents alone keeps them in memory)"))
    if text_from.cache and text_from.cache_dir:
        missing = [c for c in dict.fromkeys(captions) if not text_from._disk_path(c).is_file()]
        size = len(missing) * text_output_bytes(text_from.model)
        if missing:
            needs.append(Need(f"text-encoder cache of {len(missing)} captions {size_text(size)}", size,
                              "turn off cache_text_encoder_outputs_to_disk (the cache stays in memory)"))
    return needs


def text_output_bytes(model) -> int:
    """One caption's cached outputs, at most: every encoder's hidden states (fp32) plus a pooled vector."""
    total = 2 * ENTRY_BYTES
    for encoder in model.text_encoders():
        config = encoder.config
        tokens = min(getattr(config, "max_position_embeddings", None) or TEXT_TOKENS, TEXT_TOKENS)
        total += (tokens + 1) * config.hidden_size * 4
    return total


def check_free_space(folder, needs: list[Need], setting: str = "output_dir", log=print) -> None:
    """Raise TrainerError before training when ``needs`` plus a margin do not fit on ``folder``'s drive."""
    needs = [n for n in needs if n.size > 0]
    if not needs:
        return
    base = existing_parent(folder)
    try:
        free = shutil.disk_usage(base).free
    except OSError as err:  # some network drives do not say
        log(f"note: free disk space of {base} unknown ({err}); not checked")
        return
    total = sum(n.size for n in needs)
    margin = MARGIN_BYTES + int(total * MARGIN_SHARE)
    if total + margin <= free:
        return
    fixes = ["free some space", f"set {setting} to a folder on a larger drive"]
    fixes += list(dict.fromkeys(n.fix for n in needs if n.fix))
    raise TrainerError(
        f"Not enough disk space for this run in {Path(folder)}: it needs about {size_text(total + margin)} "
        f"({', '.join(n.what for n in needs)}, margin {size_text(margin)}) and the drive has "
        f"{size_text(free)} free. Nothing was trained yet: " + "; or ".join(fixes) + ".")

