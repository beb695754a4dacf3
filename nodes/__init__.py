"""ComfyUI node adapters over trainer/: each parses widgets, calls the trainer, wraps outputs.

Node ids carry the LT_ prefix: core ComfyUI already has TrainLoraNode, SaveLoRANode,
LoraModelLoader and LoraSave.
"""

from .dataset import DatasetLoader
from .merge import DatasetMerge
from .lora import LoraSave
from .lora_apply import LoraApply
from .model import KolorsSDXLLoader, LoraLoad
from .prep import AutoTagger, CaptionEditor, DatasetReport, SmartCrop
from .sample import SamplerPreview
from .train import LoraTrain, TrainingOptions

NODES = {
    "LT_KolorsSDXLLoader": (KolorsSDXLLoader, "Kolors/SDXL Loader"),
    "LT_DatasetLoader": (DatasetLoader, "Dataset Loader"),
    "LT_SmartCrop": (SmartCrop, "Smart Crop"),
    "LT_AutoTagger": (AutoTagger, "Auto Tagger"),
    "LT_CaptionEditor": (CaptionEditor, "Caption Editor"),
    "LT_DatasetReport": (DatasetReport, "Dataset Report"),
    "LT_DatasetMerge": (DatasetMerge, "Dataset Merge"),
    "LT_TrainingOptions": (TrainingOptions, "Training Options"),
    "LT_LoraTrain": (LoraTrain, "LoRA Train"),
    "LT_LoraSave": (LoraSave, "LoRA Save"),
    "LT_LoraLoad": (LoraLoad, "LoRA Load"),
    "LT_LoraApply": (LoraApply, "LoRA Apply"),
    "LT_SamplerPreview": (SamplerPreview, "Sampler preview"),
}

NODE_CLASS_MAPPINGS = {key: cls for key, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {key: name for key, (_, name) in NODES.items()}
