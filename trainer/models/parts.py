"""Loading one component (UNet, VAE, text encoder, tokenizer) from a diffusers-style folder.

Every loader is local-only (never a hub), loads straight into the requested dtype, picks the
fp16 variant when that is all the folder has, and turns a missing file into a TrainerError that
names the file and says what to do.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError

WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")


def _require_config(path: Path, what: str) -> None:
    if not (path / "config.json").is_file():
        raise TrainerError(
            f"Missing {what}: {path / 'config.json'} not found. The model folder is incomplete; "
            "copy the whole folder again (every subfolder with its config.json and weights)."
        )


def _variant(path: Path) -> str | None:
    """'fp16' when the folder only has *.fp16.* weight files (as Kolors-diffusers ships)."""
    files = [p.name for p in path.iterdir() if p.is_file()]
    plain = any(f.startswith(WEIGHT_NAMES) and ".fp16." not in f and f.endswith((".safetensors", ".bin", ".json"))
                and not f.endswith("config.json") for f in files)
    fp16 = any(".fp16." in f for f in files)
    return "fp16" if fp16 and not plain else None


def load_diffusers_model(folder, subfolder: str, cls_name: str, dtype, what: str):
    import diffusers

    path = Path(folder) / subfolder
    _require_config(path, what)
    cls = getattr(diffusers, cls_name)
    return cls.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True, variant=_variant(path))


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; ComfyUI installs have either."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def load_transformers_model(folder, subfolder: str, cls, dtype, what: str, **extra):
    path = Path(folder) / subfolder
    _require_config(path, what)
    return cls.from_pretrained(str(path), local_files_only=True, variant=_variant(path), **{_dtype_kwarg(): dtype},
                               **extra)


def load_clip_tokenizer(folder, subfolder: str, tokenizer_dir=None):
    from transformers import CLIPTokenizer

    # the model's own tokenizer first (a fine-tune may have added tokens); ``tokenizer_dir`` (ComfyUI's
    # comfy/sd1_tokenizer) for models that carry none, such as single-file checkpoints
    candidates = [Path(folder) / subfolder]
    candidates += [Path(tokenizer_dir) / subfolder, Path(tokenizer_dir)] if tokenizer_dir else []
    for cand in candidates:
        if (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file():
            return CLIPTokenizer.from_pretrained(str(cand), local_files_only=True)
    raise TrainerError(
        f"No CLIP tokenizer for '{subfolder}': looked for vocab.json + merges.txt in "
        + ", ".join(str(c) for c in candidates)
        + ". Copy the model's tokenizer folder there, or pass tokenizer_dir."
    )


def find_file(folders, name: str) -> Path | None:
    for folder in folders:
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None
