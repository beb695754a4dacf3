"""ComfyUI entry point of the LoRA trainer pack.

ComfyUI imports this folder as a package (under whatever name it has in custom_nodes/), so every
import below is relative: the pack's own ``nodes`` never shadows ComfyUI's top-level ``nodes``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.runs_api import register as _register_routes

_register_routes()  # the Training sidebar's /lora_trainer/runs routes (only inside a running ComfyUI)

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
