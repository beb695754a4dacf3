"""Dataset-preparation throughput: Smart Crop (focus) + WD14 tagging of N photos at 1024².

    python bench/prep_throughput.py [--count 1000] [--size 1024] [--batch 16]

Uses a stand-in WD14 ONNX model of the real input size (448) built here, since no tagger weights
can be downloaded; the tagging cost measured is pre-processing + onnxruntime on that graph. Each
image is decoded once per pass (the crop is tagged from memory). Prints images/s per stage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_photos(folder: Path, count: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        base = rng.integers(60, 200, 3)
        arr = (rng.normal(0, 18, (size // 8, size // 8, 3)) + base).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR)
        x, y = rng.integers(0, size * 3 // 4, 2)
        ImageDraw.Draw(img).ellipse((x, y, x + size // 4, y + size // 3), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=92)
        paths.append(path)
    return paths


def stand_in_tagger(folder: Path):
    import torch

    class StandIn(torch.nn.Module):
        def forward(self, x):
            pooled = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 16).flatten(1)
            return torch.sigmoid(pooled[:, :64] / 255.0)

    torch.onnx.export(StandIn(), torch.zeros(1, 448, 448, 3), str(folder / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "n"}})
    rows = ["tag_id,name,category,count"] + [f"{i},tag_{i},0,1" for i in range(64)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    from trainer.data.tagger_wd14 import WD14Tagger

    return WD14Tagger(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    from trainer.data.images import open_rgb
    from trainer.data.smart_crop import smart_crop

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        paths = make_photos(tmp, args.count, args.size)
        print(f"made {args.count} photos of {args.size}² in {time.perf_counter() - t:.1f} s")
        tagger = stand_in_tagger(tmp)
        decode = crop = tag = 0.0
        for start in range(0, len(paths), args.batch):
            t0 = time.perf_counter()
            images = [open_rgb(p) for p in paths[start:start + args.batch]]
            t1 = time.perf_counter()
            crops = [smart_crop(img, 1024, 1024, "focus").image for img in images]
            t2 = time.perf_counter()
            tagger.tag(crops, batch_size=args.batch)
            t3 = time.perf_counter()
            decode, crop, tag = decode + t1 - t0, crop + t2 - t1, tag + t3 - t2
        n = len(paths)
        print(f"{'stage':<10}{'seconds':>9}{'images/s':>10}")
        for name, secs in (("decode", decode), ("crop", crop), ("tag", tag), ("total", decode + crop + tag)):
            print(f"{name:<10}{secs:>9.1f}{n / secs:>10.1f}")


if __name__ == "__main__":
    main()
