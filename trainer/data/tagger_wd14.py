"""WD14 tagging (SmilingWolf's wd-v1-4-* / wd-*-tagger-v3 ONNX models) on onnxruntime.

The model files are not on PyPI: users put ``model.onnx`` and ``selected_tags.csv`` in a folder
(ComfyUI: models/wd14_tagger/<name>/). Pre-processing is the models' own: RGB -> padded to a
square with white -> resized to the model's input size (448) -> BGR float32 0..255, NHWC.
Post-processing: general tags above ``general_threshold`` and character tags above
``character_threshold``, rating tags dropped, underscores to spaces (kaomoji kept), the user's
exclude list removed, ordered by confidence.

Default general threshold 0.6: seed 000 recommends 0.6 for its tagger ("lower = more detailed
captions"); WD14's authors use 0.35, which yields more tags: lower it for more detail.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TrainerError

GENERAL, CHARACTER, RATING = 0, 4, 9
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
           "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
WHERE = ("Put model.onnx and selected_tags.csv of a WD14 tagger (e.g. SmilingWolf/wd-v1-4-moat-tagger-v2 or "
         "wd-eva02-large-tagger-v3 from Hugging Face) in {folder}.")


@dataclass
class TagResult:
    tags: list[tuple[str, float]]  # (tag, confidence), most confident first
    rating: dict[str, float] = field(default_factory=dict)

    def caption(self) -> str:
        return ", ".join(tag for tag, _ in self.tags)


def pad_square_white(img: Image.Image) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """[size, size, 3] float32 BGR 0..255 (NHWC row), as the WD14 models were trained."""
    square = pad_square_white(img.convert("RGB")).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1].copy()


class WD14Tagger:
    def __init__(self, folder):
        folder = Path(folder)
        model, tags = folder / "model.onnx", folder / "selected_tags.csv"
        if not model.is_file() or not tags.is_file():
            raise TrainerError("WD14 tagger files missing in " + str(folder) + ". " + WHERE.format(folder=folder))
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model), providers=ort.get_available_providers())
        self.input = self.session.get_inputs()[0]
        self.size = int(self.input.shape[1]) if isinstance(self.input.shape[1], int) else 448
        with open(tags, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            self.names = [r["name"] for r in rows]
            self.categories = np.array([int(r["category"]) for r in rows])
        except (KeyError, ValueError):
            raise TrainerError(f"{tags}: expected the columns tag_id,name,category,count.") from None

    def tag(self, images: list[Image.Image], general_threshold: float = 0.6, character_threshold: float = 0.85,
            exclude=(), batch_size: int = 8) -> list[TagResult]:
        excluded = {normalise(t) for t in exclude}
        results = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([preprocess(img, self.size) for img in images[start:start + batch_size]])
            probs = self.session.run(None, {self.input.name: batch})[0]
            if probs.shape[1] != len(self.names):
                raise TrainerError(f"The tagger outputs {probs.shape[1]} scores but selected_tags.csv lists "
                                   f"{len(self.names)} tags: the two files are from different models.")
            results += [self._decode(row, general_threshold, character_threshold, excluded) for row in probs]
        return results

    def _decode(self, row, general_threshold, character_threshold, excluded) -> TagResult:
        tags, rating = [], {}
        for name, category, p in zip(self.names, self.categories, row.tolist()):
            if category == RATING:
                rating[name] = p
            elif (category == CHARACTER and p >= character_threshold) or (category == GENERAL and p >= general_threshold):
                tag = name if name in KAOMOJI else name.replace("_", " ")
                if normalise(tag) not in excluded:
                    tags.append((tag, p))
        tags.sort(key=lambda t: -t[1])
        return TagResult(tags, rating)


def normalise(tag: str) -> str:
    return tag.strip().lower().replace("_", " ")
