"""ComfyUI node adapters over trainer/: each parses widgets, calls the trainer, wraps outputs.

Node ids carry the LT_ prefix: core ComfyUI already has TrainLoraNode, SaveLoRANode,
LoraModelLoader and LoraSave. Smart Crop and Caption Editor nodes come with the
dataset-preparation work (their cores are in trainer/data/).
"""

from .dataset import DatasetLoader
from .lora import LoraSave
from .model import KolorsSDXLLoader, LoraLoad
from .prep import AutoTagger
from .sample import SamplerPreview
from .train import LoraTrain, TrainingOptions

NODES = {
    "LT_KolorsSDXLLoader": (KolorsSDXLLoader, "Kolors/SDXL Loader"),
    "LT_DatasetLoader": (DatasetLoader, "Dataset Loader"),
    "LT_AutoTagger": (AutoTagger, "Auto Tagger"),
    "LT_TrainingOptions": (TrainingOptions, "Training Options"),
    "LT_LoraTrain": (LoraTrain, "LoRA Train"),
    "LT_LoraSave": (LoraSave, "LoRA Save"),
    "LT_LoraLoad": (LoraLoad, "LoRA Load"),
    "LT_SamplerPreview": (SamplerPreview, "Sampler preview"),
}

NODE_CLASS_MAPPINGS = {key: cls for key, (cls, _) in NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {key: name for key, (_, name) in NODES.items()}
