"""ComfyUI's weight-adapter arithmetic (comfy/weight_adapter + comfy/lora.py at a125cd84), written
here from its formulas so CI can check our files without ComfyUI: the weight ComfyUI patches a
module to at strength 1 from a file's tensors, and which of the file's keys its loader consumes.
bench/comfy_adapter_parity.py cross-checks this against the real ComfyUI.

Module tensors use kohya/LyCORIS names: ``<name>.lora_up.weight`` / ``.lora_down.weight`` /
``.lora_mid.weight``, ``.hada_w1_a`` ... ``.hada_t2``, ``.lokr_w1[_a/_b]`` / ``.lokr_w2[_a/_b]`` /
``.lokr_t2``, ``.oft_blocks`` / ``.rescale``, with ``.alpha`` and ``.dora_scale`` beside any."""

from __future__ import annotations

import torch

LORA = ("lora_up.weight", "lora_down.weight", "lora_mid.weight")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
OFT = ("oft_blocks", "rescale")
COMMON = ("alpha", "dora_scale")


def module_names(tensors: dict) -> set[str]:
    """The module names of a kohya/LyCORIS file (everything before the first dot)."""
    return {key.split(".", 1)[0] for key in tensors}


def module_tensors(tensors: dict, name: str) -> dict[str, torch.Tensor]:
    """{suffix: tensor} of module ``name``."""
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def algorithm(parts: dict) -> str:
    """lora / loha / lokr / oft: the one adapter of comfy.weight_adapter that takes these tensors."""
    found = [algo for algo, present in (
        ("lora", "lora_up.weight" in parts),
        ("loha", "hada_w1_a" in parts),
        ("lokr", any(k in parts for k in ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w2_a"))),
        ("oft", "oft_blocks" in parts and parts["oft_blocks"].ndim == 3)) if present]
    if len(found) != 1:
        raise ValueError(f"module tensors {sorted(parts)} hold {found or 'no'} adapter; expected exactly one")
    return found[0]


def loaded_keys(tensors: dict, name: str) -> set[str]:
    """The keys of module ``name`` that comfy.lora.load_lora consumes when the module is mapped (the
    rest of the file's keys it logs as "lora key not loaded")."""
    parts = module_tensors(tensors, name)
    used = {k for k in COMMON if k in parts}  # read for every mapped module
    if "lora_up.weight" in parts:
        used |= {"lora_up.weight", "lora_down.weight"} | ({"lora_mid.weight"} & set(parts))
    if "hada_w1_a" in parts:
        used |= set(LOHA[:4]) | ({"hada_t1", "hada_t2"} if "hada_t1" in parts else set())
    used |= set(LOKR) & set(parts)
    if "oft_blocks" in parts and parts["oft_blocks"].ndim == 3:
        used |= {"oft_blocks"} | ({"rescale"} & set(parts))
    return {f"{name}.{k}" for k in used}


def patched_weight(tensors: dict, name: str, weight: torch.Tensor, dora_norm_of_patched: bool = False) -> torch.Tensor:
    """The weight ComfyUI gives module ``name`` (base ``weight``) at strength 1, computed in float32
    as ComfyUI's patcher does.

    ``dora_norm_of_patched``: normalise an output-axis DoRA by the patched weight's norm (DoRA's own
    definition, what LyCORIS trains) instead of the original weight's norm, which is what ComfyUI
    a125cd84 does; for showing that this norm is the whole difference."""
    parts = {k: v.float() for k, v in module_tensors(tensors, name).items()}
    w = weight.detach().float().clone()
    alpha = parts["alpha"].item() if "alpha" in parts else None
    kind = algorithm(parts)
    if kind == "lora":
        diff, scale = _lora(parts, w.shape)
    elif kind == "loha":
        diff, scale = _loha(parts, w.shape)
    elif kind == "lokr":
        diff, scale = _lokr(parts, w.shape)
    else:
        diff, scale = _oft(parts, w, alpha), None
    if kind != "oft":  # alpha / rank; no alpha: 1 (LoKr: also 1 when nothing is factorised)
        scale = alpha / scale if alpha is not None and scale is not None else 1.0
    else:
        scale = 0.0 if alpha is None else alpha  # OFT hands its constraint to DoRA as "alpha"
    if "dora_scale" in parts:
        return _weight_decompose(parts["dora_scale"], w, diff, scale, dora_norm_of_patched)
    return w + (diff if kind == "oft" else scale * diff)


def _lora(parts, shape):
    """up @ down; with a Tucker mid, down becomes mid contracted with down over the rank."""
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    rank = down.shape[0]
    if "lora_mid.weight" in parts:
        down = torch.einsum("abkl,bi->aikl", parts["lora_mid.weight"], down.flatten(1))
    return (up.flatten(1) @ down.flatten(1)).reshape(shape), rank


def _loha(parts, shape):
    """(w1_a @ w1_b) * (w2_a @ w2_b), each factor through its Tucker core when there is one."""
    def factor(i):
        a, b = parts[f"hada_w{i}_a"], parts[f"hada_w{i}_b"]
        t = parts.get(f"hada_t{i}")
        return a @ b if t is None else torch.einsum("ijkl,jr,ip->prkl", t, b, a)

    return (factor(1) * factor(2)).reshape(shape), parts["hada_w1_b"].shape[0]


def _lokr(parts, shape):
    """kron(w1, w2); the rank that divides alpha is the last factorised side's (none: no scaling)."""
    rank = None
    w1 = parts.get("lokr_w1")
    if w1 is None:
        w1, rank = parts["lokr_w1_a"] @ parts["lokr_w1_b"], parts["lokr_w1_b"].shape[0]
    w2 = parts.get("lokr_w2")
    if w2 is None:
        a, b, t = parts["lokr_w2_a"], parts["lokr_w2_b"], parts.get("lokr_t2")
        w2, rank = (a @ b if t is None else torch.einsum("ijkl,jr,ip->prkl", t, b, a)), b.shape[0]
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(shape), rank


def _oft(parts, w, constraint):
    """Block-diagonal Cayley rotation of the weight's output blocks: Q = B - B^T (norm clamped to the
    constraint when it is > 0), R = (I + Q)(I - Q)^-1, each block of rows becomes R^T @ rows. The
    file's ``rescale`` is read by ComfyUI but not applied."""
    blocks = parts["oft_blocks"]
    count, size = blocks.shape[0], blocks.shape[1]
    q = blocks - blocks.transpose(1, 2)
    if constraint is not None and constraint > 0:
        norm = q.flatten().norm() + 1e-8  # over all blocks at once
        if norm > constraint:
            q = q * (constraint / norm)
    eye = torch.eye(size, dtype=q.dtype)
    rotation = (eye + q) @ torch.linalg.inv(eye - q)
    rows = w.reshape(count, size, -1)
    return ((rotation - eye).transpose(1, 2) @ rows).reshape(w.shape)


def _weight_decompose(magnitude, w, diff, scale, norm_of_patched):
    """DoRA: W' = m * (W + scale * diff) / ||.||, the norm per output row when m has one value per
    output (of the ORIGINAL W in ComfyUI a125cd84), else per input column of W + scale * diff."""
    patched = w + scale * diff
    if magnitude.shape[0] == patched.shape[0]:
        source = patched if norm_of_patched else w
        norm = source.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
    else:
        norm = patched.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
    return patched * (magnitude / (norm + torch.finfo(w.dtype).eps))
