"""The model families the trainer supports, by the name users type."""

from ..errors import TrainerError
from .base import Conditioning, Family
from .kolors import KOLORS_FAMILY
from .sd15 import SD15_FAMILY
from .sdxl import SDXL_FAMILY

FAMILIES: dict[str, Family] = {f.name: f for f in (SDXL_FAMILY, SD15_FAMILY, KOLORS_FAMILY)}
ALIASES = {"sd1.5": "sd15", "sd1": "sd15", "sd_v1": "sd15", "sd-xl": "sdxl", "xl": "sdxl"}


def get_family(name: str) -> Family:
    key = ALIASES.get(str(name).lower().strip(), str(name).lower().strip())
    if key not in FAMILIES:
        raise TrainerError(f"Unknown model family '{name}'. Use one of: {', '.join(FAMILIES)} (or 'auto').")
    return FAMILIES[key]


__all__ = ["Conditioning", "Family", "FAMILIES", "get_family"]
