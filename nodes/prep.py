"""Dataset preparation nodes over trainer/data: Smart Crop, Auto Tagger (WD14), Caption Editor,
Dataset Report. Captions change in memory; only Caption Editor writes .txt files, when asked."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..trainer.errors import TrainerError
from . import comfy_env

TAGGER_KIND, BLIP_KIND, DD_KIND = "wd14_tagger", "blip", "deepdanbooru"


def tagger_choices() -> list[str]:
    """"wd14/<name>" for models/wd14_tagger/<name>/model.onnx, "blip/<name>" for models/blip/<name>/."""
    names = []
    for kind, prefix, marker in ((TAGGER_KIND, "wd14", "model.onnx"), (BLIP_KIND, "blip", "config.json"),
                                 (DD_KIND, "deepdanbooru", "tags.txt")):
        for folder in comfy_env.model_folders(kind):
            if folder.is_dir():
                names += [f"{prefix}/{p.name}" for p in sorted(folder.iterdir()) if (p / marker).is_file()]
    return names or ["(put a WD14 tagger in models/wd14_tagger/<name>/ or BLIP in models/blip/<name>/)"]


def load_tagger(choice: str):
    """A function images -> captions for a tagger choice, with the node's thresholds bound later."""
    prefix, _, name = choice.partition("/")
    kind = {"wd14": TAGGER_KIND, "blip": BLIP_KIND, "deepdanbooru": DD_KIND}.get(prefix)
    folder = comfy_env.full_path(kind, name) if kind and name else None
    if folder is None:
        raise TrainerError(f"Tagger '{choice}' not found: put a WD14 tagger (model.onnx + selected_tags.csv) in "
                           f"models/{TAGGER_KIND}/<name>/ or a BLIP model folder in models/{BLIP_KIND}/<name>/, "
                           "then refresh.")
    if prefix == "blip":
        from ..trainer.data.captioner_blip import BlipCaptioner

        captioner = BlipCaptioner(folder)
        return lambda images, threshold, character_threshold, exclude: captioner.caption(images)
    if prefix == "deepdanbooru":
        from ..trainer.data.tagger_deepdanbooru import DeepDanbooruTagger

        dd = DeepDanbooruTagger(folder)
        return lambda images, threshold, character_threshold, exclude: [
            r.caption() for r in dd.tag(images, threshold, exclude)]
    from ..trainer.data.tagger_wd14 import WD14Tagger

    tagger = WD14Tagger(folder)
    return lambda images, *args: [r.caption() for r in tagger.tag(images, *args)]


class AutoTagger:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "captions")
    FUNCTION = "tag"
    DESCRIPTION = ("Captions every image: WD14 tags (ONNX) or BLIP sentences. Remove fixed features afterwards "
                   "so the trigger word learns them.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LT_DATASET", {"tooltip": "From Dataset Loader."}),
            "tagger": (tagger_choices(), {"tooltip": "wd14/...: tags (models/wd14_tagger/<name>/ with model.onnx "
                                          "and selected_tags.csv, e.g. SmilingWolf/wd-v1-4-moat-tagger-v2); "
                                          "blip/...: sentences (models/blip/<name>/, e.g. "
                                          "Salesforce/blip-image-captioning-base)."}),
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

        run = load_tagger(tagger)
        todo = [i for i, item in enumerate(dataset.items)
                if not item.is_reg and not (mode == "keep existing" and item.caption.strip())]
        bar = comfy_env.Progress(len(todo))
        items = list(dataset.items)
        excluded = [t for t in exclude.split(",") if t.strip()]
        for done, start in enumerate(range(0, len(todo), 8)):
            chunk = todo[start:start + 8]
            comfy_env.raise_if_interrupted()
            results = run([open_rgb(items[i].path) for i in chunk], threshold, character_threshold, excluded)
            for i, tags in zip(chunk, results):
                caption = f"{items[i].caption}, {tags}" if mode == "append" and items[i].caption else tags
                items[i] = replace(items[i], caption=caption or items[i].caption)
            bar.update(min(len(todo), start + len(chunk)))
        tagged = replace(dataset, items=items)
        text = "\n".join(f"{item.path.name}: {item.caption}" for item in tagged.train_items)
        return (tagged, text)


SIZES = ["512x512", "512x768", "768x512", "1024x1024", "1024x768", "768x1024", "custom"]


class SmartCrop:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "summary")
    FUNCTION = "crop"
    DESCRIPTION = ("Crops every image to one size keeping the subject (faces, then salient or in-focus content, "
                   "else the centre). The preview shows each chosen window (red) on the original picture, with "
                   "the subject box (yellow), faces (blue) and the cue that decided.")
    PREVIEW_LIMIT = 12  # pictures drawn in the preview (the summary lists every image)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LT_DATASET", {"tooltip": "From Dataset Loader."}),
            "mode": (["focus", "center", "none"], {"default": "focus", "tooltip": "focus keeps the main subject "
                     "(seed 000 recommends it); center crops the middle; none pads to the size on white."}),
            "size": (SIZES, {"default": "1024x1024", "tooltip": "Seed 000: 512x512, 512x768 or 768x512 for SD1.5; "
                             "1024x1024 or 1024x768 for SDXL/Kolors."}),
            "custom_width": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64, "tooltip": "With size custom."}),
            "custom_height": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64, "tooltip": "With size custom."}),
        }}

    def crop(self, dataset, mode, size, custom_width, custom_height):
        import hashlib

        from ..trainer.data.crop_preview import cue_name, draw_crop
        from ..trainer.data.face_detect import face_detector_note
        from ..trainer.data.images import open_rgb
        from ..trainer.data.smart_crop import smart_crop
        from .images import grid, preview

        width, height = (custom_width, custom_height) if size == "custom" else map(int, size.split("x"))
        key = hashlib.sha256(f"{dataset.root}|{mode}|{width}x{height}".encode()).hexdigest()[:12]
        out_root = comfy_env.output_dir() / "lora_trainer" / "prepared" / key
        bar = comfy_env.Progress(len(dataset.items))
        items, upscaled, methods, lines, drawn = [], 0, {}, [], []
        for n, item in enumerate(dataset.items, 1):
            comfy_env.raise_if_interrupted()
            original = open_rgb(item.path)
            result = smart_crop(original, width, height, mode)
            rel = item.path.relative_to(dataset.root) if dataset.root in item.path.parents else Path(item.path.name)
            target, mask = crop_with_mask(item, result, (out_root / rel).with_suffix(".png"),
                                          (out_root.with_name(key + "_masks") / rel).with_suffix(".png"))
            items.append(replace(item, path=target, size=(width, height), source_size=result.original_size,
                                 source_crop=result.crop_top_left, mask=mask))
            upscaled += result.upscaled
            methods[cue_name(result)] = methods.get(cue_name(result), 0) + 1
            lines.append(f"{rel.as_posix()}: {cue_name(result)}")
            if len(drawn) < self.PREVIEW_LIMIT:
                drawn.append(draw_crop(original, result))
            bar.update(n)
        summary = (f"{len(items)} images cropped to {width}x{height} ({mode}), decided by "
                   + ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
                   + (f"; {upscaled} small images were upscaled" if upscaled else ""))
        note = face_detector_note() if mode == "focus" else None
        if note:  # e.g. OpenCV 5 without a face model: say so where the user looks
            summary += "\n" + note
        summary += "\n" + "\n".join(lines)
        images = preview(grid(drawn, cell=256, columns=4)) if drawn else []
        return {"ui": {"images": images, "text": [summary]}, "result": (replace(dataset, items=items), summary)}


def crop_with_mask(item, result, target: Path, mask_target: Path):
    """Save Smart Crop's ``result`` at ``target``; the item's loss mask cropped the same way at
    ``mask_target`` (a folder of its own: never scanned as images), an alpha channel kept in the PNG
    (alpha_mask reads it). Returns (image, mask or None)."""
    from ..trainer.atomic import save_image
    from ..trainer.data.masks import mask_image, read_alpha
    from ..trainer.data.smart_crop import crop_mask

    image, mask = result.image, None
    if item.mask is not None:
        mask = save_image(mask_target, crop_mask(mask_image(item), result))
    else:
        alpha = read_alpha(item.path)
        if alpha is not None:
            image = image.copy()
            image.putalpha(crop_mask(alpha, result))
    return save_image(target, image), mask


class CaptionEditor:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "captions")
    FUNCTION = "edit"
    OUTPUT_NODE = True
    DESCRIPTION = "Edits captions: remove fixed features so the trigger word learns them, add, replace, trigger first."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LT_DATASET", {"tooltip": "From Dataset Loader, Smart Crop or Auto Tagger."}),
            "edits": ("STRING", {"multiline": True, "default": "trigger: mychar\nremove: black hair\ndedupe",
                                 "tooltip": "One edit per line: remove: a, b | add: x | add_start: x | "
                                 "replace: old -> new | trigger: word | dedupe | sort: 1"}),
            "only_image": ("STRING", {"default": "", "tooltip": "A file name to edit just that image; empty = all."}),
            "write_files": ("BOOLEAN", {"default": False, "tooltip": "Also write the .txt files beside the dataset's "
                                        "images (after Smart Crop: its copies in output/lora_trainer/prepared/); old "
                                        "captions are kept in .caption_backups/."}),
        }}

    def edit(self, dataset, edits, only_image, write_files):
        from ..trainer.data.caption_edit import apply_edits, parse_edits
        from ..trainer.data.caption_files import write_captions

        edited = apply_edits(dataset, parse_edits(edits), only=only_image.strip() or None)
        new = {e.image: e.new for e in edited}
        items = [replace(item, caption=new.get(item.path, item.caption)) for item in dataset.items]
        if write_files:
            write_captions([e for e in edited if e.changed])
        text = "\n".join(f"{item.path.name}: {item.caption}" for item in items if not item.is_reg)
        return {"ui": {"text": [text]}, "result": (replace(dataset, items=items), text)}


class DatasetReport:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("report_image", "report")
    FUNCTION = "report"
    OUTPUT_NODE = True
    DESCRIPTION = ("Counts, sizes, small images, near-duplicates, missing captions, tag frequency, loss-mask coverage, "
                   "estimated steps (per dataset after Dataset Merge).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("LT_DATASET", {"tooltip": "Any dataset output."}),
            "resolution": ("INT", {"default": 1024, "min": 64, "max": 4096, "step": 64, "tooltip": "Training size."}),
            "epochs": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "For the step estimate."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "For the step estimate."}),
        }, "optional": {
            "options": ("LT_OPTIONS", {"tooltip": "Training Options going to LoRA Train: the report then reads "
                                       "masked_loss, alpha_mask and conditioning_data_dir as training will."}),
        }}

    def report(self, dataset, resolution, epochs, batch_size, options=None):
        from ..trainer.data.report import dataset_report
        from ..trainer.data.report_render import report_image, report_text
        from .images import preview, to_image_tensor

        problem = None
        if options:
            from ..trainer.config import TrainConfig
            from ..trainer.data.masks import masks_for_run
            from ..trainer.data.merge import resolve_parts

            config = TrainConfig.from_dict(dict(options), source="Training Options")
            try:
                dataset = masks_for_run(resolve_parts(dataset, config), config)
            except TrainerError as err:  # e.g. masked_loss without a mask anywhere: a finding, shown
                problem = str(err)
        rep = dataset_report(dataset, resolution, epochs, batch_size)
        if problem:
            rep.notes.insert(0, f"warning: {problem}")
        card = report_image(rep)
        text = report_text(rep)
        return {"ui": {"images": preview(card), "text": [text]}, "result": (to_image_tensor(card), text)}
