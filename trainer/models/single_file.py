"""Load a single-file SD1.5 / SDXL checkpoint (.safetensors, LDM/SGM key layout), offline.

Each component is read from the file on its own (only its tensors, cast to the target dtype as
they are read), converted by diffusers' own per-model single-file loaders
(``UNet2DConditionModel.from_single_file`` / ``AutoencoderKL.from_single_file`` given the tensors
as a dict, ``create_diffusers_clip_model_from_ldm`` for the text encoders) against a local
diffusers-style config folder, so nothing ever asks a hub and peak memory stays about one model
in the target dtype. Single-file checkpoints carry no tokenizer: it comes from ``tokenizer_dir``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import TrainerError
from ..families import get_family
from .detect import _read_json, detect_checkpoint_family
from .loaded import LoadedModel, sampling_scheduler, to_dtype
from .ldm_write import CLIP_PREFIXES, EMBEDDED_CONFIGS, UNET, VAE
from .parts import load_clip_tokenizer

CONFIGS = Path(__file__).parent / "configs"
VAE_PREFIXES = (VAE, "vae.")


class _EmptyFp32Note(logging.Filter):
    """diffusers warns 'modules ... should be kept in float32: []' on every from_single_file dtype cast."""

    def filter(self, record) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


@contextmanager
def _quiet_dtype_note():
    log, note = logging.getLogger("diffusers.models.modeling_utils"), _EmptyFp32Note()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)


def read_keys(path: Path) -> list[str]:
    return read_header(path)[0]


def read_header(path: Path) -> tuple[list[str], dict]:
    """The tensor names and the string metadata of a .safetensors file."""
    from safetensors import safe_open

    if path.suffix.lower() != ".safetensors":
        raise TrainerError(f"{path}: only .safetensors checkpoints are supported "
                           "(convert a .ckpt to .safetensors first).")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), f.metadata() or {}
    except Exception as e:  # SafetensorError, OSError: truncated download, not a safetensors file
        raise TrainerError(f"Cannot read {path}: it is not a valid .safetensors file or it is damaged "
                           f"(an incomplete download?). Download it again. ({e})") from e


def read_tensors(path: Path, keys, dtype: torch.dtype | None) -> dict:
    """The named tensors, each cast to ``dtype`` as it is read (no full-file copy in another dtype)."""
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in keys:
                tensor = f.get_tensor(key)
                out[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    except Exception as e:
        raise TrainerError(f"Cannot read the tensors of {path}: the file is damaged ({e}). Download it again.") from e
    return out


def _check_loaded(model, path: Path, what: str) -> None:
    missing = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.device.type == "meta"]
    if missing:
        raise TrainerError(f"{path}: the checkpoint lacks {len(missing)} {what} tensors (e.g. {missing[0]}); "
                           "the file is incomplete or is not a checkpoint of this model type.")


@contextmanager
def _config_root(family, config_dir, metadata: dict):
    """The folder whose */config.json describe the checkpoint: ``config_dir``, else the configs the
    file carries in its header (written by ``write_single_file(embed_configs=True)``), else the
    bundled real SD1.5 / SDXL configs."""
    embedded = metadata.get(EMBEDDED_CONFIGS)
    if config_dir or not embedded:
        yield _checked_root(family, Path(config_dir) if config_dir else CONFIGS / family.name)
        return
    try:
        configs = json.loads(embedded)
    except ValueError as e:
        raise TrainerError(f"The checkpoint's embedded model configs are not valid JSON ({e}).") from e
    with tempfile.TemporaryDirectory(prefix="lt-configs-") as tmp:
        for part, config in configs.items():
            (Path(tmp) / part).mkdir()
            (Path(tmp) / part / "config.json").write_text(json.dumps(config), encoding="utf-8")
        yield _checked_root(family, Path(tmp))


def _checked_root(family, root: Path) -> Path:
    subs = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if family.name == "sdxl" else [])
    for sub in subs:
        if not (root / sub / "config.json").is_file():
            raise TrainerError(f"Config folder {root} has no {sub}/config.json. Pass config_dir=<a diffusers "
                               f"{family.label} folder> (only its config.json files are read).")
    return root


def tokenizers_for(family, tokenizer_dir, config_root: Path) -> dict:
    """The CLIP tokenizer(s) of ``family`` from ``tokenizer_dir`` (or ``config_root``'s tokenizer folders)."""
    sdxl = family.name == "sdxl"
    try:
        toks = {"tokenizer": load_clip_tokenizer(config_root, "tokenizer", tokenizer_dir)}
        if sdxl:  # CLIP-G uses CLIP-L's vocabulary, padded with "!"
            try:
                tok2 = load_clip_tokenizer(config_root, "tokenizer_2", tokenizer_dir)
            except TrainerError:
                tok2 = load_clip_tokenizer(config_root, "tokenizer", tokenizer_dir)
            tok2.pad_token = "!"
            toks["tokenizer_2"] = tok2
    except TrainerError as e:
        raise TrainerError(
            "Single-file checkpoints carry no tokenizer, and none was found "
            f"(tokenizer_dir={tokenizer_dir}, config folder {config_root}). Pass tokenizer_dir=<folder with "
            "vocab.json + merges.txt>: a CLIP tokenizer folder such as ComfyUI's comfy/sd1_tokenizer, or a "
            "diffusers model folder with tokenizer/" + (" and tokenizer_2/" if sdxl else "") + " subfolders.") from e
    return toks


def _load_weights(path: Path, keys, prefixes: dict, root: Path, dtype) -> dict:
    """Each component in turn: read its tensors (cast while reading), convert, free."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    classes = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
               "unet": UNet2DConditionModel, "vae": AutoencoderKL}
    parts = {}
    for part, prefix in prefixes.items():
        part_dtype = torch.float32 if part == "vae" else dtype  # the VAE stays fp32, as loader.py does
        state = read_tensors(path, [k for k in keys if k.startswith(prefix)], part_dtype)
        if part.startswith("text_encoder"):
            parts[part] = create_diffusers_clip_model_from_ldm(
                classes[part], state, subfolder=part, config=str(root), torch_dtype=part_dtype, local_files_only=True)
        else:
            parts[part] = classes[part].from_single_file(
                state, config=str(root), subfolder=part, torch_dtype=part_dtype, local_files_only=True)
        del state
    return parts


def load_single_file(path, family: str = "auto", dtype=torch.float32, tokenizer_dir=None, config_dir=None):
    """A single-file SD1.5/SDXL checkpoint as a LoadedModel (UNet + text encoders in ``dtype``, VAE fp32).

    ``config_dir``: a diffusers-style folder whose */config.json describe the architecture (default:
    the bundled real SD1.5 / SDXL configs); ``tokenizer_dir``: where the CLIP tokenizer(s) are.
    """
    from diffusers.loaders.single_file_utils import SingleFileComponentError


    path, dtype = Path(path), to_dtype(dtype)
    if not path.is_file():
        raise TrainerError(f"Checkpoint not found: {path}.")
    keys, metadata = read_header(path)
    name = detect_checkpoint_family(keys) if family == "auto" else get_family(family).name
    if name not in CLIP_PREFIXES:
        raise TrainerError(f"{get_family(name).label} has no single-file checkpoint format here; "
                           "load it from its diffusers folder instead.")
    fam = get_family(name)
    prefixes = {"unet": UNET, "vae": VAE, **CLIP_PREFIXES[name]}
    for part, prefix in prefixes.items():
        if not any(k.startswith(prefix) for k in keys):
            raise TrainerError(f"{path} is not a complete {fam.label} checkpoint: it has no {part} tensors "
                               f"({prefix}*). Pick a full checkpoint (UNet + VAE + text encoders).")
    with _config_root(fam, config_dir, metadata) as root:
        parts = tokenizers_for(fam, tokenizer_dir, root)
        try:
            with _quiet_dtype_note():
                parts.update(_load_weights(path, keys, prefixes, root, dtype))
        except (ValueError, RuntimeError, KeyError, OSError, SingleFileComponentError) as e:
            raise TrainerError(f"{path} does not load as a {fam.label} checkpoint with the configs in {root}: "
                               f"{e}") from e
        scheduler = sampling_scheduler(fam, root)
    for part in prefixes:
        _check_loaded(parts[part], path, part)
    pipe = fam.build_pipeline(parts, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(fam, pipe, str(path), dtype)


def load_single_file_vae(path, family: str | None = None):
    """A VAE .safetensors file: LDM keys (bare, ``first_stage_model.`` or ``vae.``) or diffusers keys.

    Its config (scaling_factor!) comes from a ``config.json`` beside the file when there is one,
    else from the bundled config of ``family`` (sd15 when not given; SDXL VAEs need family="sdxl").
    """
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"VAE not found: {path}.")
    keys = read_keys(path)
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            keys = [k for k in keys if k.startswith(prefix)]
            break
    if not any(k.startswith(("encoder.", "decoder.") + VAE_PREFIXES) for k in keys):
        raise TrainerError(f"{path} is not a VAE: it has no encoder/decoder tensors.")
    if _read_json(path.parent / "config.json").get("_class_name") == "AutoencoderKL":  # a diffusers vae/ folder
        config, subfolder = str(path.parent), None
    else:  # the bundled config of the family (Kolors uses the SDXL VAE)
        name = get_family(family or "sd15").name
        config, subfolder = str(CONFIGS / ("sdxl" if name == "kolors" else name)), "vae"
    state = read_tensors(path, keys, torch.float32)
    try:
        with _quiet_dtype_note():
            vae = AutoencoderKL.from_single_file(state, config=config, subfolder=subfolder,
                                                 torch_dtype=torch.float32, local_files_only=True)
    except (ValueError, RuntimeError, KeyError, OSError, SingleFileComponentError) as e:
        raise TrainerError(f"{path} does not load as a Stable Diffusion VAE: {e}") from e
    _check_loaded(vae, path, "VAE")
    return vae
