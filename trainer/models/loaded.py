"""A loaded model (family adapter + diffusers pipeline), dtype names and the sampling scheduler:
what both loaders (diffusers folders in loader.py, single files in single_file.py) hand back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainerError
from ..families import Family

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A family adapter plus the diffusers pipeline holding the model's parts."""

    family: Family
    pipe: object  # a diffusers pipeline (StableDiffusion / StableDiffusionXL / Kolors)
    source: str
    dtype: torch.dtype
    offload: bool = False  # move to the CPU between uses (the nodes honour it)
    host: object = None  # a HostBinding when the weights belong to another program (host_weights.py)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    def text_encoders(self) -> list:
        return [m for m in (getattr(self.pipe, n) for n in self.family.text_parts if n.startswith("text_encoder"))
                if m is not None]

    def to(self, device) -> "LoadedModel":
        if self.host is None:  # a host's weights stay where the host keeps them
            self.pipe.to(device)
        return self


def to_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise TrainerError(f"Unknown dtype '{dtype}'. Use fp32, fp16 or bf16.")
    return DTYPES[str(dtype).lower()]


def scheduler_file(folder) -> Path | None:
    """A diffusers folder's scheduler/scheduler_config.json, when it has one."""
    path = Path(folder) / "scheduler" / "scheduler_config.json" if folder else None
    return path if path and path.is_file() else None


def check_prediction_type(folder, v_parameterization: bool, log=print) -> None:
    """A diffusers folder's scheduler says what its UNet predicts ("epsilon", "v_prediction"); say
    so when v_parameterization disagrees (as kohya, the setting decides: a single file says nothing)."""
    path = scheduler_file(folder)
    kind = json.loads(path.read_text(encoding="utf-8")).get("prediction_type") if path else None
    if kind not in ("epsilon", "v_prediction") or (kind == "v_prediction") == bool(v_parameterization):
        return
    if v_parameterization:
        log(f"warning: v_parameterization = true, but {path} says this model predicts the noise (epsilon): "
            "remove v_parameterization unless you know the model is a v-prediction one")
    else:
        log(f"warning: {path} says this model predicts v (v_prediction), but v_parameterization is off: "
            "set v_parameterization = true or the LoRA will learn the wrong target")


def sampling_scheduler(family: Family, folder: Path | None):
    """The model's own scheduler config when it ships one, else the family's default."""
    from diffusers import EulerDiscreteScheduler

    config = dict(family.sampling_schedule)
    path = scheduler_file(folder)
    if path:
        config = json.loads(path.read_text(encoding="utf-8"))
    return EulerDiscreteScheduler.from_config(config)
