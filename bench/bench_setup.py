"""What every training-step measurement shares: the model folder, the dataset, memory readings.

The models are built once into ``<out>/models/`` (tiny: trainer/tiny/build.py; full size:
trainer/tiny/full_size.py, random bf16 weights in the real architectures) and reused; the
dataset is a few painted pictures with distinct captions in kohya's layout (``1_bench/``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = {"resolution": 256, "batch": 1}  # full-size SD1.5 / SDXL at 256²: ~2-4 s per bf16 step here
TINY = {"resolution": 64, "batch": 2}
RANK = 8  # LoRA rank (alpha = rank) on the family's attention projections


@dataclass
class Spec:
    """One measurement's inputs; every measurement of a family gets the same one."""

    family: str
    model: str  # diffusers folder
    data: str  # dataset folder (kohya layout)
    resolution: int
    batch: int
    epochs: int
    steps_per_epoch: int
    mixed_precision: str
    out: str  # scratch folder of this measurement
    rank: int = RANK

    def to_dict(self) -> dict:
        return asdict(self)


def ensure_model(family: str, size: str, out: Path) -> Path:
    """The model folder for ``family`` ("tiny" or "full" ``size``), built on first use."""
    folder = Path(out) / "models" / f"{family}_{size}"
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if size == "full":
        from trainer.tiny.full_size import write_full_size_model

        write_full_size_model(family, tmp)
    else:
        from trainer.tiny.build import write_tiny_model

        write_tiny_model(family, tmp)
    os.replace(tmp, folder)  # only a complete folder gets the final name
    return folder


CAPTIONS = ["bench, a red circle on a blue field", "bench, a green square on sand", "bench, a yellow star at night",
            "bench, two white stripes on grey", "bench, an orange ring on teal", "bench, a purple triangle on white",
            "bench, a black dot on pink", "bench, a blue cross on yellow"]


def ensure_dataset(folder: Path, count: int, size: int) -> Path:
    """``count`` painted pictures of ``size``² with distinct captions in ``folder/1_bench/``."""
    from PIL import Image, ImageDraw

    from trainer.atomic import save_image, write_text

    sub = Path(folder) / "1_bench"
    if sub.is_dir() and len(list(sub.glob("*.png"))) == count:
        return Path(folder)
    shutil.rmtree(sub, ignore_errors=True)
    for i in range(count):
        img = Image.new("RGB", (size, size), (40 + 25 * (i % 8), 80, 200 - 20 * (i % 8)))
        draw = ImageDraw.Draw(img)
        r = size // 4 + i % 3 * size // 16
        cx, cy = size // 2 + int(size / 8 * math.cos(i)), size // 2 + int(size / 8 * math.sin(i))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 200 - 15 * i % 200, 40))
        save_image(sub / f"{i:02d}.png", img)
        write_text(sub / f"{i:02d}.txt", f"{CAPTIONS[i % len(CAPTIONS)]}, picture {i}")
    return Path(folder)


def memory_status() -> dict[str, float]:
    """Current and peak resident memory in GB, from /proc/self/status (ru_maxrss elsewhere)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return {"peak_gb": peak * scale / 1e9}

    def field(name: str) -> float:
        match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(match.group(1)) * 1024 / 1e9 if match else float("nan")

    return {"rss_gb": field("VmRSS"), "anon_gb": field("RssAnon"), "file_gb": field("RssFile"),
            "peak_gb": field("VmHWM")}


def model_gigabytes(model) -> dict[str, float]:
    """Bytes of every part's parameters and buffers, as loaded (GB), and their sum."""
    parts = {"unet": model.unet, "vae": model.vae}
    parts.update({f"text_encoder{'' if i == 0 else f'_{i + 1}'}": m for i, m in enumerate(model.text_encoders())})
    sizes = {name: sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers())) / 1e9
             for name, m in parts.items()}
    sizes["total"] = sum(sizes.values())
    return sizes

