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


def sampling_scheduler(family: Family, folder: Path | None):
    """The model's own scheduler config when it ships one, else the family's default."""
    from diffusers import EulerDiscreteScheduler

    config = dict(family.sampling_schedule)
    path = Path(folder) / "scheduler" / "scheduler_config.json" if folder else None
    if path and path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
    return EulerDiscreteScheduler.from_config(config)
