"""Read the kohya ``ss_*`` and ``modelspec.*`` metadata of a LoRA file and summarise it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..errors import TrainerError

FAMILIES = {"sdxl_base_v1-0": "sdxl", "sd_v1": "sd15", "sd_1.5": "sd15"}


def read_metadata(path) -> dict[str, str]:
    """The string metadata of a .safetensors header ({} for other files)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise TrainerError(f"Cannot read LoRA {path}: {err}. The file is corrupt or incomplete.") from None


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def top_tags(tag_frequency: str | dict, n: int = 10) -> list[tuple[str, int]]:
    """The ``n`` most frequent tags of kohya's ``ss_tag_frequency`` ({folder: {tag: count}})."""
    if isinstance(tag_frequency, str):
        try:
            tag_frequency = json.loads(tag_frequency)
        except json.JSONDecodeError:
            return []
    counts: Counter = Counter()
    for folder in (tag_frequency or {}).values():
        if isinstance(folder, dict):
            counts.update({str(tag).strip(): int(c) for tag, c in folder.items()})
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def summarize(metadata: dict[str, str], tensors: dict | None = None) -> dict:
    """family, rank, alpha, trained steps, trigger words and top-10 tags, from whatever is present."""
    meta = metadata or {}
    arch = meta.get("modelspec.architecture", "")
    family = meta.get("lt_family") or FAMILIES.get(meta.get("ss_base_model_version", ""))
    if not family and arch:
        family = "sdxl" if "-xl-" in arch else "sd15" if "v1" in arch else None
    rank = int(meta["ss_network_dim"]) if str(meta.get("ss_network_dim", "")).isdigit() else None
    if rank is None and tensors:
        downs = [v for k, v in tensors.items() if k.endswith("lora_down.weight")]
        rank = int(downs[0].shape[0]) if downs else None
    alpha = _float(meta.get("ss_network_alpha"))
    if alpha is None and tensors:
        alphas = [v for k, v in tensors.items() if k.endswith(".alpha")]
        alpha = float(alphas[0]) if alphas else None
    steps = meta.get("ss_steps") or meta.get("ss_max_train_steps")
    trigger = meta.get("modelspec.trigger_phrase", "")
    return {"family": family, "network": network_kind(meta, tensors), "rank": rank, "alpha": alpha,
            "steps": int(steps) if str(steps or "").isdigit() else None,
            "trigger_words": trigger or "", "title": meta.get("modelspec.title", ""),
            "top_tags": top_tags(meta.get("ss_tag_frequency", "{}"))}


def network_kind(meta: dict, tensors: dict | None = None) -> str:
    """LoRA, LoCon, LoHa, LoKr, OFT (+ DoRA) from the tensor names, else from ss_network_args."""
    keys = list(tensors or ())
    args = meta.get("ss_network_args") or "{}"
    try:
        args = json.loads(args)
    except json.JSONDecodeError:
        args = {}
    if keys:
        kind = ("LoHa" if any(".hada_" in k for k in keys) else "LoKr" if any(".lokr_" in k for k in keys)
                else "OFT" if any(k.endswith(".oft_blocks") for k in keys)
                else "LoCon" if any(k.endswith("lora_down.weight") and tensors[k].ndim == 4 and tensors[k].shape[-1] > 1
                                    for k in keys) else "LoRA")
        dora = any(k.endswith(".dora_scale") for k in keys)
    else:
        algo = str(args.get("algo", "lora")).lower()
        kind = {"loha": "LoHa", "lokr": "LoKr", "diag-oft": "OFT", "oft": "OFT", "locon": "LoCon"}.get(algo, "LoRA")
        dora = str(args.get("dora_wd", "")).lower() == "true"
    return kind + (" + DoRA" if dora else "")


def describe(summary: dict) -> str:
    """One short human-readable paragraph for the CLI and the node's info output."""
    tags = ", ".join(f"{t} ({c})" for t, c in summary["top_tags"]) or "none recorded"
    fields = [f"family {summary['family'] or 'unknown'}", summary.get("network") or "LoRA",
              f"rank {summary['rank'] or '?'}",
              f"alpha {summary['alpha'] if summary['alpha'] is not None else '?'}",
              f"steps {summary['steps'] if summary['steps'] is not None else '?'}"]
    trigger = summary["trigger_words"] or "none"
    return f"{', '.join(fields)}; trigger words: {trigger}; top tags: {tags}"


def describe_file(path) -> str:
    """The summary line of a LoRA file (for the loader node's info output and the CLI)."""

    tensors, metadata = read_raw(path)
    return describe(summarize(metadata, tensors))


def read_raw(path) -> tuple[dict, dict]:
    """(tensors as stored, safetensors metadata) of a .safetensors or pickle (.ckpt/.pt/.pth/.bin) file."""
    from safetensors.torch import load_file

    from .pickle_safe import PICKLE_SUFFIXES, load_pickle, tensors_of

    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"LoRA file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return tensors_of(load_pickle(path)), {}
    if suffix != ".safetensors":
        raise TrainerError(f"{path.name}: a LoRA must be .safetensors, .ckpt, .pt, .pth or .bin.")
    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise TrainerError(f"Cannot read LoRA {path}: {err}. The file is corrupt or incomplete.") from None
