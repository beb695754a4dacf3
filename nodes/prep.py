"""Dataset preparation nodes over trainer/data: Auto Tagger (WD14). Captions change in memory;
writing .txt files is the Caption Editor's job."""

from __future__ import annotations

from dataclasses import replace

from ..trainer.errors import TrainerError
from . import comfy_env

TAGGER_KIND = "wd14_tagger"


def tagger_choices() -> list[str]:
    names = []
    for folder in comfy_env.model_folders(TAGGER_KIND):
        if folder.is_dir():
            names += [p.name for p in sorted(folder.iterdir()) if (p / "model.onnx").is_file()]
    return names or ["(put a WD14 tagger in models/wd14_tagger/<name>/)"]


class AutoTagger:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "captions")
    FUNCTION = "tag"
    DESCRIPTION = "Tags every image with a WD14 tagger (ONNX). Remove fixed features afterwards so the trigger word learns them."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LT_DATASET", {"tooltip": "From Dataset Loader."}),
            "tagger": (tagger_choices(), {"tooltip": "A folder in models/wd14_tagger/ with model.onnx and "
                                          "selected_tags.csv (e.g. SmilingWolf/wd-v1-4-moat-tagger-v2)."}),
            "threshold": ("FLOAT", {"default": 0.6, "min": 0.05, "max": 1.0, "step": 0.01, "tooltip":
                                    "Lower = more, more detailed tags. Seed 000 recommends 0.6; WD14's own default is 0.35."}),
            "character_threshold": ("FLOAT", {"default": 0.85, "min": 0.05, "max": 1.0, "step": 0.01,
                                              "tooltip": "Character-name tags need this confidence."}),
            "exclude": ("STRING", {"default": "", "tooltip": "Comma-separated tags never to write (e.g. black hair)."}),
            "mode": (["replace", "append", "keep existing"], {"default": "replace", "tooltip":
                     "replace: captions become the tags; append: tags after existing captions; keep existing: "
                     "only tag images without a caption."}),
        }}

    def tag(self, dataset, tagger, threshold, character_threshold, exclude, mode):
        from ..trainer.data.images import open_rgb
        from ..trainer.data.tagger_wd14 import WD14Tagger

        folder = comfy_env.full_path(TAGGER_KIND, tagger)
        if folder is None:
            raise TrainerError(f"Tagger '{tagger}' not found: put model.onnx and selected_tags.csv in "
                               f"models/{TAGGER_KIND}/<name>/ and refresh.")
        model = WD14Tagger(folder)
        todo = [i for i, item in enumerate(dataset.items)
                if not item.is_reg and not (mode == "keep existing" and item.caption.strip())]
        bar = comfy_env.Progress(len(todo))
        items = list(dataset.items)
        excluded = [t for t in exclude.split(",") if t.strip()]
        for done, start in enumerate(range(0, len(todo), 8)):
            chunk = todo[start:start + 8]
            comfy_env.raise_if_interrupted()
            results = model.tag([open_rgb(items[i].path) for i in chunk], threshold, character_threshold, excluded)
            for i, result in zip(chunk, results):
                tags = result.caption()
                caption = f"{items[i].caption}, {tags}" if mode == "append" and items[i].caption else tags
                items[i] = replace(items[i], caption=caption or items[i].caption)
            bar.update(min(len(todo), start + len(chunk)))
        tagged = replace(dataset, items=items)
        text = "\n".join(f"{item.path.name}: {item.caption}" for item in tagged.train_items)
        return (tagged, text)
