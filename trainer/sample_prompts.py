"""Sample prompts in kohya's format: one per line, with per-line options.

    a portrait of ltchar, smiling --n blurry, lowres --w 768 --h 1024 --d 42 --s 28 --l 6.5

--n negative prompt, --w/--h size, --d seed, --s steps, --l cfg scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import save_image
from .names import inside
from .save_fallback import save_with_fallback

OPTION = re.compile(r"\s--([nwhdsl])\s")


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None


def parse_prompt_line(line: str) -> SamplePrompt:
    parts = OPTION.split(" " + line.strip() + " ")
    sample = SamplePrompt(parts[0].strip())
    casts = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
             "s": ("steps", int), "l": ("cfg", float)}
    for flag, value in zip(parts[1::2], parts[2::2]):
        name, cast = casts[flag]
        setattr(sample, name, cast(value.strip()))
    return sample


def write_samples(model, config, folder: Path, tag: str = "", log=print) -> dict[str, Path]:
    """Generate every prompt of ``config.sample_prompts``; returns {name: png path}. A sample that
    cannot be written (a full disk) goes to the temp folder with a warning: training goes on."""
    from .sample import generate

    width, height = config.size()
    files = {}
    for i, line in enumerate(config.sample_prompts):
        s = parse_prompt_line(line)
        image = generate(model, s.prompt, s.negative, s.seed if s.seed is not None else config.seed,
                         s.steps or config.sample_steps, s.cfg if s.cfg is not None else config.sample_cfg,
                         s.width or width, s.height or height, config.sample_sampler)
        name = f"sample_{i:02d}{tag}"
        target = inside(folder, f"{config.output_name}_{name}.png")
        files[name], problem = save_with_fallback(lambda path: save_image(path, image), target,
                                                  config.output_name, "sample image")
        if problem:
            log(f"warning: {problem}")
    return files
