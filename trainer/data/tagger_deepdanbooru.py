"""DeepDanbooru tagging from an ONNX export (model.onnx + tags.txt, one tag per line).

DeepDanbooru ships as a Keras model; users who have the ONNX conversion put ``model.onnx`` and
``tags.txt`` in a folder (ComfyUI: models/deepdanbooru/<name>/). Input: RGB 0..1, NHWC, the model's
size (512), the image scaled to fit and padded (DeepDanbooru pads with black); no rating split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TrainerError
from .tagger_wd14 import KAOMOJI, TagResult, normalise

WHERE = "Put model.onnx and tags.txt of a DeepDanbooru ONNX export in {folder}."


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255.0


class DeepDanbooruTagger:
    def __init__(self, folder):
        folder = Path(folder)
        model, tags = folder / "model.onnx", folder / "tags.txt"
        if not model.is_file() or not tags.is_file():
            raise TrainerError(f"DeepDanbooru files missing in {folder}. " + WHERE.format(folder=folder))
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(model), providers=ort.get_available_providers())
        self.input = self.session.get_inputs()[0]
        self.size = int(self.input.shape[1]) if isinstance(self.input.shape[1], int) else 512
        self.names = [t.strip() for t in tags.read_text(encoding="utf-8-sig").splitlines() if t.strip()]

    def tag(self, images, threshold: float = 0.6, exclude=(), batch_size: int = 8) -> list[TagResult]:
        excluded = {normalise(t) for t in exclude}
        results = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([preprocess(img, self.size) for img in images[start:start + batch_size]])
            for row in self.session.run(None, {self.input.name: batch})[0]:
                tags = [(n if n in KAOMOJI else n.replace("_", " "), float(p))
                        for n, p in zip(self.names, row.tolist()) if p >= threshold and not n.startswith("rating:")]
                tags = [(t, p) for t, p in tags if normalise(t) not in excluded]
                results.append(TagResult(sorted(tags, key=lambda t: -t[1])))
        return results
