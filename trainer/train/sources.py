"""Where a batch's latents and text conditioning come from: encoded live every step, or cached.

With ``cache_latents`` every image is fitted and VAE-encoded once (the distribution's mean and
std are kept, so each step still draws a fresh latent sample); with
``cache_text_encoder_outputs`` every distinct caption is encoded once. Both caches can live on
disk (``cache_dir``), keyed by file content + model + size + crop (+ clip skip for text), so a
second run on the same data does no VAE and no text-encoder work at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import save_safetensors
from ..data.dataset import Dataset
from ..data.augment import Augment, Geometry, augment_image, fit_image
from ..data.buckets import apply_bucket
from ..data.images import FittedImage, UnreadableImage, cover_size, open_rgb, to_tensor, unreadable_message
from ..data.masks import fit_mask, mask_image, to_latent_size
from ..errors import TrainerError
from ..families import Conditioning


@dataclass
class LatentBatch:
    latents: torch.Tensor  # scaled, [B, 4, h, w]
    original_sizes: list[tuple[int, int]]
    crops: list[tuple[int, int]]
    target_size: tuple[int, int] | None = None  # (height, width) of the images, for time ids
    masks: torch.Tensor | None = None  # [B, 1, h, w] loss masks at latent size (masked_loss), None: no mask


def model_key(model) -> str:
    """Identity of the model's encoders for cache keys: source, family, VAE config, a weight sample."""
    vae_weight = next(model.vae.parameters())
    parts = [model.source, model.family.name, json.dumps(dict(model.vae.config), sort_keys=True, default=str),
             f"{float(vae_weight.float().sum()):.6e}"]
    for encoder in model.text_encoders():
        parts.append(f"{float(next(encoder.parameters()).float().sum()):.6e}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def _scale(vae, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (mean + std * noise - shift) * vae.config.scaling_factor


class LatentSource:
    """Fits and VAE-encodes images; with ``cache`` each image only once (in memory and on disk)."""

    def __init__(self, model, dataset: Dataset, width: int, height: int, cache: bool = False,
                 cache_dir: Path | None = None, augment: Augment | None = None, rng=None, buckets=None):
        self.model, self.dataset, self.size = model, dataset, (width, height)
        self.augment, self.rng, self.buckets = augment or Augment(), rng, buckets
        self.cache = cache
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory: dict[int, tuple] = {}
        self.model_key = model_key(model) if cache else ""
        self.vae_calls = 0

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor):
        vae = self.model.vae
        self.vae_calls += 1
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        return dist.mean.float().cpu(), dist.std.float().cpu()

    def _size(self, index: int) -> tuple[int, int]:
        """(width, height) item ``index`` trains at without a bucket: its dataset's (kohya subsets)
        or the run's."""
        subset = self.dataset.items[index].subset
        return subset.part.resolution if subset is not None else self.size

    def _augment(self, index: int) -> Augment:
        """The item's subset's flip/colour/crop settings; a source without a random generator
        (an evaluation) augments nothing."""
        subset = self.dataset.items[index].subset
        return Augment.from_config(subset) if subset is not None and self.rng is not None else self.augment

    @functools.cached_property
    def augmenting(self) -> bool:
        """Whether any item is augmented (each sample then draws its own augmentation seed)."""
        return self.augment.active or any(self._augment(i).active for i in range(len(self.dataset.items))
                                          if self.dataset.items[i].subset is not None)

    def _disk_path(self, index: int) -> Path:
        item = self.dataset.items[index]
        if self.buckets and index in self.buckets:
            choice = self.buckets[index]
            top, left = choice.crop_top_left
            place = f"{choice.bucket[0]}x{choice.bucket[1]}_{choice.resized_size[0]}x{choice.resized_size[1]}_{top}_{left}"
        else:
            place = "{}x{}_center".format(*self._size(index))
        key = f"{file_digest(item.path)}_{self.model_key}_{place}"
        return self.cache_dir / f"{key}.safetensors"

    def _cached(self, index: int):
        if index in self.memory:
            return self.memory[index]
        path = self._disk_path(index) if self.cache_dir else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            t = load_file(str(path))
            entry = (t["mean"], t["std"], tuple(t["original_size"].tolist()), tuple(t["crop"].tolist()),
                     self._latent_mask(self._cached_geometry_mask(index), t["mean"].shape[-2:]))
        else:
            fitted = self._fit(index)
            mean, std = self._encode(fitted.pixels[None])
            entry = (mean[0], std[0], fitted.original_size, fitted.crop_top_left,
                     self._latent_mask(fitted.mask, mean.shape[-2:]))
            if path is not None:
                save_safetensors(path, {"mean": entry[0], "std": entry[1],
                                        "original_size": torch.tensor(entry[2]), "crop": torch.tensor(entry[3])})
        self.memory[index] = entry
        return entry

    def prepare(self, log=print, rank: int = 0, world: int = 1) -> None:
        """Fill the cache before training (no-op without caching). With several processes and a
        disk cache each encodes its share; the others' files are read once they exist (the caller
        waits for every rank between prepare and training)."""
        if not self.cache:
            return
        count = len(self.dataset.items)
        problems = []  # every image that changed since the dataset check, not just the first
        for index in range(rank, count, world) if self.cache_dir else range(count):
            try:
                self._cached(index)
            except UnreadableImage as err:
                problems.append((err.path, err.reason))
        if problems:
            raise TrainerError(unreadable_message(problems, Path(self.dataset.root)))
        log(f"latents cached for {count} images ({self.vae_calls} VAE calls)")

    def batch(self, indices: list[int], generator: torch.Generator | None, device, eps: torch.Tensor | None = None,
              rngs: list | None = None) -> LatentBatch:
        """Scaled latents drawn from each image's distribution: with ``eps`` (standard normal draws
        shaped like the latents) given, else drawn from ``generator``, else each distribution's mean.
        ``rngs``: one random.Random per index for augmentation (default: the source's own rng)."""
        if self.cache:
            entries = [self._cached(i) for i in indices]
            mean = torch.stack([e[0] for e in entries])
            std = torch.stack([e[1] for e in entries])
            sizes, crops = [e[2] for e in entries], [e[3] for e in entries]
            masks = [e[4] for e in entries]
        else:
            fitted = [self._fit(i, rng) for i, rng in zip(indices, rngs or [self.rng] * len(indices))]
            mean, std = self._encode(torch.stack([f.pixels for f in fitted]))
            sizes, crops = [f.original_size for f in fitted], [f.crop_top_left for f in fitted]
            masks = [self._latent_mask(f.mask, mean.shape[-2:]) for f in fitted]
        if eps is None:
            eps = torch.zeros_like(mean) if generator is None else torch.randn(mean.shape, generator=generator)
        target = self._target(indices[0])
        stacked = None
        if any(m is not None for m in masks):  # kohya: the batch's images without a mask weigh 1 everywhere
            stacked = torch.stack([torch.ones((1, *mean.shape[-2:])) if m is None else m for m in masks]).to(device)
        return LatentBatch(_scale(self.model.vae, mean, std, eps).to(device), sizes, crops, target, stacked)

    @staticmethod
    def _latent_mask(mask: torch.Tensor | None, latent_hw) -> torch.Tensor | None:
        return None if mask is None else to_latent_size(mask, tuple(latent_hw))

    def latent_shape(self, index: int) -> tuple[int, int, int]:
        """(channels, height, width) of item ``index``'s latent, known before encoding it."""
        config = self.model.vae.config
        factor = 2 ** (len(config.block_out_channels) - 1)
        height, width = self._target(index)
        return config.latent_channels, height // factor, width // factor

    def _target(self, index: int) -> tuple[int, int]:
        width, height = self.buckets[index].bucket if self.buckets and index in self.buckets else self._size(index)
        return height, width

    def _fit(self, index: int, rng=None):
        """The image fitted to its bucket (or the training size), augmented when asked; its loss
        mask through the same resize, crop and flip."""
        item = self.dataset.items[index]
        path, rng, augment = item.path, rng or self.rng, self._augment(index)
        if self.buckets and index in self.buckets:
            img = open_rgb(path)
            original, choice = (img.height, img.width), self.buckets[index]
            pixels, flipped = augment_image(apply_bucket(img, choice), augment, rng)
            fitted = FittedImage(to_tensor(pixels), original, choice.crop_top_left)
            geometry = Geometry(choice.resized_size, choice.crop_top_left, choice.bucket, flipped)
            img_size = img.size
        else:
            fitted, geometry = fit_image(path, *self._size(index), augment, rng)
            img_size = (fitted.original_size[1], fitted.original_size[0])
            if item.source_size:  # a Smart Crop file: time ids describe the crop in its source
                top, left = item.source_crop
                fitted = FittedImage(fitted.pixels, item.source_size,
                                     (top + fitted.crop_top_left[0], left + fitted.crop_top_left[1]))
        fitted.mask = self._mask(index, geometry, img_size)
        return fitted

    def _mask(self, index: int, geometry, img_size: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Item ``index``'s mask through ``geometry`` (a Geometry, or a function of the image size
        giving one); None when the item has no mask."""
        mask = mask_image(self.dataset.items[index])
        if mask is None:
            return None
        if img_size is not None and mask.size != tuple(img_size):
            raise TrainerError(f"The mask of {self.dataset.items[index].path} is {mask.size[0]}x{mask.size[1]}, the "
                               f"image {img_size[0]}x{img_size[1]}: a mask must have its image's size.")
        g = geometry if isinstance(geometry, Geometry) else geometry(mask.size)
        return fit_mask(mask, g.resized_size, g.top_left, g.size, g.flipped)

    def _cached_geometry_mask(self, index: int) -> torch.Tensor | None:
        """The mask of a latent read from the disk cache: caching allows no random crop or flip, so
        the geometry is the bucket's or the centre crop's."""
        if self.dataset.items[index].mask is None:
            return None
        if self.buckets and index in self.buckets:
            choice = self.buckets[index]
            return self._mask(index, Geometry(choice.resized_size, choice.crop_top_left, choice.bucket))
        width, height = self._size(index)

        def centre(size):
            resized = cover_size(size, width, height)
            return Geometry(resized, ((resized[1] - height) // 2, (resized[0] - width) // 2), (width, height))

        return self._mask(index, centre)


def diffusers_clip_skip(clip_skip: int) -> int | None:
    """kohya counts the last layer as 1 (2 = penultimate); diffusers counts layers skipped."""
    return clip_skip - 1 if clip_skip and clip_skip > 1 else None


class TextSource:
    """Encodes captions; with ``cache`` each distinct caption only once (in memory and on disk)."""

    def __init__(self, model, clip_skip: int | None, cache: bool = False, cache_dir: Path | None = None,
                 trainable: bool = False, options: dict | None = None):
        self.model, self.clip_skip, self.cache, self.trainable = model, clip_skip, cache, trainable
        self.options = dict(options or {})  # encode_text's max_token_length / weighted (caption_options.py)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.memory: dict[str, Conditioning] = {}
        self.model_key = model_key(model) if cache else ""
        self.encoder_calls = 0

    def _encode(self, captions: list[str], device) -> Conditioning:
        self.encoder_calls += 1
        with torch.set_grad_enabled(self.trainable):  # gradients only when a text-encoder LoRA trains
            return self.model.family.encode_text(self.model.pipe, captions, device, self.clip_skip, **self.options)

    def _disk_path(self, caption: str) -> Path:
        options = f"|{sorted(self.options.items())}" if self.options else ""  # 150 tokens: another tensor
        key = hashlib.sha256(f"{caption}|{self.model_key}|{self.clip_skip}{options}".encode()).hexdigest()[:32]
        return self.cache_dir / f"text_{key}.safetensors"

    def _cached(self, caption: str, device) -> Conditioning:
        if caption in self.memory:
            return self.memory[caption]
        path = self._disk_path(caption) if self.cache_dir else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            t = load_file(str(path))
            cond = Conditioning(t["context"], t.get("pooled"))
        else:
            enc = self._encode([caption], device)
            cond = Conditioning(enc.context[0].cpu(), None if enc.pooled is None else enc.pooled[0].cpu())
            if path is not None:
                tensors = {"context": cond.context} | ({} if cond.pooled is None else {"pooled": cond.pooled})
                save_safetensors(path, tensors)
        self.memory[caption] = cond
        return cond

    def prepare(self, captions: list[str], device, log=print, rank: int = 0, world: int = 1) -> None:
        """As LatentSource.prepare: every distinct caption, or this rank's share with a disk cache."""
        if not self.cache:
            return
        distinct = list(dict.fromkeys(captions))
        for caption in distinct[rank::world] if self.cache_dir else distinct:
            self._cached(caption, device)
        log(f"text encoder outputs cached for {len(distinct)} captions ({self.encoder_calls} encoder calls)")

    def batch(self, captions: list[str], device) -> Conditioning:
        if not self.cache:
            return self._encode(captions, device)
        conds = [self._cached(c, device) for c in captions]
        pooled = None if conds[0].pooled is None else torch.stack([c.pooled for c in conds])
        return Conditioning(torch.stack([c.context for c in conds]), pooled).to(device)
