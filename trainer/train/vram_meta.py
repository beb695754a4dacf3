"""GPU memory of the real architectures, measured on the meta device (shapes and dtypes, no
storage): parameter counts, the tensors a training step saves for backward, and the inference
peaks of the encoders. Every result is cached per configuration, so only the first estimate for
a (model, resolution, batch) pays for building the modules and running the forward.

Two instruments:

* ``saved_tensors_hooks`` around the LoRA-wrapped UNet's training forward: every tensor autograd
  keeps for backward is recorded once per storage (views and tensors saved twice count once),
  parameters excluded. Diffusers' gradient checkpointing calls a function we provide for each
  block it would checkpoint; ours runs the block normally but tags what it saves, so one forward
  gives both the plain and the checkpointed figures.
* ``PeakTracker``: a dispatch mode that follows every storage from creation until its last tensor
  dies (meta storages keep their Python object alive as long as any tensor uses them), giving
  the peak of an inference pass (VAE encode/decode, text encoders).

``LikeCuda`` makes the meta run allocate what a CUDA run allocates: autocast's casts (matmuls
and convs in the low precision, norms and softmax in fp32, copies that get saved), and
scaled_dot_product_attention as the flash / memory-efficient kernels do it (q, k, v, output and
a per-row logsumexp saved; never the L x L attention matrix, which only the math fallback
materialises).
"""

from __future__ import annotations

import contextlib
import json
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

CONFIGS = Path(__file__).resolve().parents[1] / "models" / "configs"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# what each family's training loop feeds the UNet: tokens per caption (Kolors pads ChatGLM to 256)
TOKENS = {"sd15": 77, "sdxl": 77, "kolors": 256}

# CUDA autocast op lists (torch.amp, "CUDA Ops that can autocast to float16 / float32")
_LOW = {F.linear, F.conv2d, torch.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.addmm,
        torch.Tensor.matmul, torch.Tensor.__matmul__}
_FP32 = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax}


class _EfficientAttention(torch.autograd.Function):
    """Shape-only stand-in for the fused attention kernels: saves q, k, v, out and logsumexp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


class LikeCuda(TorchFunctionMode):
    """Autocast to ``dtype`` as CUDA does it (None: no autocast) and fused attention."""

    def __init__(self, dtype: torch.dtype | None):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (_cast(t, self.dtype) if self.dtype else t for t in args[:3])
            return _EfficientAttention.apply(q, k, v)
        target = self.dtype if func in _LOW else torch.float32 if func in _FP32 else None
        if self.dtype is not None and target is not None:
            args = tuple(_cast(a, target) for a in args)
            kwargs = {k: _cast(v, target) for k, v in kwargs.items()}
        return func(*args, **kwargs)


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


def _param_keys(*modules) -> set[int]:
    return {_storage_key(t) for m in modules for t in (*m.parameters(), *m.buffers())}


class PeakTracker(TorchDispatchMode):
    """Peak bytes of the storages alive at once while the mode is on (``ignore``: weights)."""

    def __init__(self, ignore: set[int]):
        super().__init__()
        self.ignore, self.live, self.current, self.peak = ignore, {}, 0, 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.ignore or key in self.live:
                    continue
                self.live[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, key)
        return out


# -- the parts -----------------------------------------------------------------------------
def family_parts(family: str) -> dict[str, tuple[str, str]]:
    """{part: (kind, config json)} of the bundled real architecture (Kolors uses SDXL's VAE)."""
    def read(folder: str, name: str) -> str:
        return json.dumps(json.loads((CONFIGS / folder / name / "config.json").read_text(encoding="utf-8")),
                          sort_keys=True)

    parts = {"unet": ("unet", read(family, "unet")),
             "vae": ("vae", read("sdxl" if family == "kolors" else family, "vae"))}
    if family == "kolors":
        parts["text_encoder"] = ("chatglm", read("kolors", "text_encoder"))
    else:
        parts["text_encoder"] = ("clip", read(family, "text_encoder"))
    if family == "sdxl":
        parts["text_encoder_2"] = ("clip_proj", read("sdxl", "text_encoder_2"))
    return parts


def build(kind: str, config_json: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The module ``kind`` built on the meta device from its config, in ``dtype``."""
    from accelerate import init_empty_weights

    config = json.loads(config_json)
    # (ComfyUI runs nodes under inference_mode; tensors made there could not join a graph)
    with torch.inference_mode(False), init_empty_weights(include_buffers=True):
        if kind in ("unet", "vae"):
            from diffusers import AutoencoderKL, UNet2DConditionModel

            cls = UNet2DConditionModel if kind == "unet" else AutoencoderKL
            module = cls.from_config(config)
        elif kind == "chatglm":
            from diffusers.pipelines.kolors import ChatGLMModel
            from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig

            # its skip_init would allocate real CPU memory; ask for the meta device outright
            module = ChatGLMModel(ChatGLMConfig(**config), device="meta")
        else:
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            cls = CLIPTextModelWithProjection if kind == "clip_proj" else CLIPTextModel
            module = cls(CLIPTextConfig(**{k: v for k, v in config.items() if k != "torch_dtype"}))
    with torch.inference_mode(False):
        for t in (*module.parameters(), *module.buffers()):  # .to(dtype) on a diffusers model logs a note
            assert t.device.type == "meta", f"{kind}: {t.device} tensor while building on meta"
            if t.is_floating_point():
                t.data = t.data.to(dtype)
    return module.eval()


@lru_cache(maxsize=64)
def count_params(kind: str, config_json: str) -> int:
    return sum(p.numel() for p in build(kind, config_json).parameters())


def text_inputs(kind: str, batch: int, tokens: int) -> dict:
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    if kind == "chatglm":
        # no mask: an all-ones mask takes the same path, and checking it would read a value
        return {"input_ids": ids, "position_ids": ids, "output_hidden_states": True}
    return {"input_ids": ids, "output_hidden_states": True}


def _shapes(module) -> tuple:
    """(shape, zero-initialised) of every trainable tensor; LoRA's up matrices (lora_B) start at zero."""
    return tuple((tuple(p.shape), "lora_B" in name) for name, p in module.named_parameters() if p.requires_grad)


# -- the UNet's training forward -----------------------------------------------------------
@dataclass(frozen=True)
class UnetProfile:
    """Bytes a training forward of the LoRA-wrapped UNet keeps for backward."""

    lora_shapes: tuple[tuple[tuple[int, ...], bool], ...]  # (shape, starts at zero) of each LoRA tensor
    saved: int  # everything saved, no checkpointing
    kept: int  # with gradient checkpointing: what is saved outside the blocks + each block's inputs
    recompute: int  # the largest block's own saved tensors, rebuilt during its backward
    largest: int  # the largest single saved tensor (sizes the gradients in flight)


def unet_inputs(config: dict, batch: int, width: int, height: int, tokens: int, dtype) -> tuple[tuple, dict]:
    def empty(*shape):
        return torch.empty(*shape, device="meta", dtype=dtype)

    latent = empty(batch, config["in_channels"], height // 8, width // 8)
    timesteps = torch.zeros(batch, dtype=torch.long, device="meta")
    context = config.get("encoder_hid_dim") or config["cross_attention_dim"]  # Kolors: ChatGLM's 4096
    kwargs = {"encoder_hidden_states": empty(batch, tokens, context)}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": empty(batch, pooled), "time_ids": empty(batch, 6)}
    return (latent, timesteps), kwargs


@lru_cache(maxsize=8)
def lora_unet(config_json: str, weight_dtype: str, rank: int, conv_rank: int, target: str = "kohya"):
    """A meta UNet in ``weight_dtype`` with the LoRA training builds (kept for the activation runs)."""
    from ..lora.network import add_lora_modules
    from ..lora.targets import NetworkSpec, unet_targets

    unet = build("unet", config_json, DTYPES[weight_dtype])
    spec = NetworkSpec(target, rank, rank, conv_rank, conv_rank or 1, 0.0, 0.0, 0.0, None, None)
    with torch.inference_mode(False):
        add_lora_modules(unet, unet_targets(unet, spec))
    return unet, _shapes(unet)


@lru_cache(maxsize=32)
def unet_profile(config_json: str, tokens: int, width: int, height: int, batch: int, weight_dtype: str,
                 autocast: str | None, rank: int, conv_rank: int = 0, target: str = "kohya") -> UnetProfile:
    """Run the training forward on meta tensors and sum what autograd saves (see module doc)."""
    unet, shapes = lora_unet(config_json, weight_dtype, rank, conv_rank, target)
    weights = _param_keys(unet)
    saved: dict[int, tuple[int, int | None]] = {}  # storage -> (bytes, block that saved it)
    block_inputs: dict[int, list[tuple[int, int]]] = {}
    where = {"block": None, "count": 0}

    def pack(t):
        key = _storage_key(t)
        if key not in weights and key not in saved:
            saved[key] = (t.untyped_storage().nbytes(), where["block"])
        return t

    def tag_block(module, *args):  # diffusers' gradient_checkpointing_func, minus the checkpointing
        outer = where["block"]
        where["count"] += 1
        where["block"] = where["count"]
        block_inputs[where["block"]] = [(_storage_key(a), a.untyped_storage().nbytes())
                                        for a in args if isinstance(a, torch.Tensor)]
        try:
            return module(*args)
        finally:
            where["block"] = outer

    unet.enable_gradient_checkpointing(tag_block)
    unet.train()
    try:
        with torch.inference_mode(False), torch.enable_grad(), LikeCuda(DTYPES.get(autocast)), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            args, kwargs = unet_inputs(json.loads(config_json), batch, width, height, tokens, DTYPES[weight_dtype])
            unet(*args, **kwargs)
    finally:
        unet.disable_gradient_checkpointing()
        unet.eval()
    outside = sum(n for n, block in saved.values() if block is None)
    # a checkpointed block keeps its inputs alive for the recompute; blocks nothing trainable
    # flows through (before the first LoRA layer) build no graph and keep nothing
    blocks = {block for _, block in saved.values() if block is not None}
    inputs = {key: n for block in blocks for key, n in block_inputs[block]
              if saved.get(key, (0, 1))[1] is not None}
    per_block: dict[int, int] = {}
    for key, (n, block) in saved.items():
        if block is not None and key not in inputs:
            per_block[block] = per_block.get(block, 0) + n
    return UnetProfile(lora_shapes=shapes, saved=sum(n for n, _ in saved.values()), kept=outside + sum(inputs.values()),
                       recompute=max(per_block.values(), default=0),
                       largest=max((n for n, _ in saved.values()), default=0))


# -- text encoders with a LoRA (CLIP families, text_encoder_lr) ----------------------------
@lru_cache(maxsize=8)
def text_encoder_lora_profile(kind: str, config_json: str, batch: int, tokens: int, weight_dtype: str,
                              autocast: str | None, rank: int) -> tuple[tuple, int]:
    """((shape, starts at zero) of each LoRA tensor, bytes saved for backward) of a text encoder
    trained with our LoRA."""
    from ..lora.network import add_text_encoder_lora

    encoder = build(kind, config_json, DTYPES[weight_dtype])
    with torch.inference_mode(False):
        add_text_encoder_lora(encoder, rank, rank)
    weights = _param_keys(encoder)
    saved: dict[int, int] = {}

    def pack(t):
        key = _storage_key(t)
        if key not in weights:
            saved.setdefault(key, t.untyped_storage().nbytes())
        return t

    with torch.inference_mode(False), torch.enable_grad(), _meta_friendly(kind), LikeCuda(DTYPES.get(autocast)), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder(**text_inputs(kind, batch, tokens))
    return _shapes(encoder), sum(saved.values())


def _rotary(x: torch.Tensor, rope_cache: torch.Tensor) -> torch.Tensor:
    """ChatGLM's apply_rotary_pos_emb as plain Python: the TorchScript original cannot run on
    meta tensors (same operations, same shapes)."""
    sq, heads = x.size(0), x.size(2)
    rot_dim = rope_cache.shape[-2] * 2
    x, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    xshaped = x.reshape(sq, -1, heads, rot_dim // 2, 2)
    rope_cache = rope_cache[:sq].view(sq, -1, 1, xshaped.size(3), 2)
    x_out = torch.stack([xshaped[..., 0] * rope_cache[..., 0] - xshaped[..., 1] * rope_cache[..., 1],
                         xshaped[..., 1] * rope_cache[..., 0] + xshaped[..., 0] * rope_cache[..., 1]], -1)
    return torch.cat((x_out.flatten(3), x_pass), dim=-1)


@contextlib.contextmanager
def _meta_friendly(kind: str):
    if kind != "chatglm":
        yield
        return
    from diffusers.pipelines.kolors import text_encoder as chatglm

    original = chatglm.apply_rotary_pos_emb
    chatglm.apply_rotary_pos_emb = _rotary
    try:
        yield
    finally:
        chatglm.apply_rotary_pos_emb = original


# -- inference peaks -----------------------------------------------------------------------
@lru_cache(maxsize=32)
def inference_peak(kind: str, config_json: str, what: str, batch: int, width: int, height: int,
                   weight_dtype: str, tokens: int = 77) -> int:
    """Peak bytes (weights excluded) of one no-grad pass: ``what`` is "encode" / "decode" for
    the VAE (images of width x height), "text" for a text encoder (``tokens`` per caption)."""
    dtype = DTYPES[weight_dtype]
    module = build(kind, config_json, dtype)
    tracker = PeakTracker(_param_keys(module))
    with torch.inference_mode(False), torch.no_grad(), _meta_friendly(kind), LikeCuda(None), tracker:
        if what == "encode":
            module.encode(torch.empty(batch, 3, height, width, device="meta", dtype=dtype)).latent_dist.mean
        elif what == "decode":
            channels = module.config.latent_channels
            module.decode(torch.empty(batch, channels, height // 8, width // 8, device="meta", dtype=dtype))
        else:
            module(**text_inputs(kind, batch, tokens))
    return tracker.peak
