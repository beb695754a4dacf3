"""Sample prompts in kohya's format: one per line, with per-line options.

    a portrait of ltchar, smiling --n blurry, lowres --w 768 --h 1024 --d 42 --s 28 --l 6.5

--n negative prompt, --w/--h size, --d seed, --s steps, --l cfg scale, --ss sampler. kohya's
``sample_prompts`` setting is a file: .txt (one prompt per line, # comments), .toml ([prompt]
defaults with [[prompt.subset]] entries) or .json (a list of lines or dicts), as its
train_util.load_prompts reads them; prompts_from_setting turns such a file into our lines.
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

from .atomic import save_image
from .errors import TrainerError
from .names import inside
from .save_fallback import save_with_fallback

PROMPT_FILE_SUFFIXES = (".txt", ".toml", ".json")
# kohya's line_to_prompt_dict: " --" starts an option; unknown ones are dropped, not kept in the prompt
OPTIONS = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
           "s": ("steps", int), "l": ("cfg", float), "ss": ("sampler", str)}
OPTION = re.compile(r"(ss|[nwhdsl]) (.+)", re.IGNORECASE | re.DOTALL)


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None


def parse_prompt_line(line: str) -> SamplePrompt:
    parts = line.strip().split(" --")
    sample = SamplePrompt(parts[0].strip())
    for part in parts[1:]:
        match = OPTION.match(part.strip())
        if not match:
            continue
        name, cast = OPTIONS[match.group(1).lower()]
        try:
            setattr(sample, name, cast(match.group(2).strip()))
        except ValueError:
            warnings.warn(f"sample prompt option --{part.strip()!r} is not a number: ignored", stacklevel=2)
    if sample.steps is not None:
        sample.steps = max(1, min(1000, sample.steps))  # kohya's clamp
    return sample


def prompts_from_setting(value: str, base_dir: Path | None = None, source: str = "config") -> list[str] | str:
    """kohya's ``sample_prompts = "prompts.txt"`` (relative to the config's folder, then the working
    folder) as our prompt lines. Other strings are returned as they are (prompt text). A missing
    file warns and gives no prompts: kohya too only logs "No prompt file" and trains on."""
    text = value.strip()
    if "\n" in text or not text.lower().endswith(PROMPT_FILE_SUFFIXES):
        return value
    candidates = [Path(text).expanduser()]
    if base_dir is not None and not candidates[0].is_absolute():
        candidates.insert(0, Path(base_dir) / text)
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        warnings.warn(f"{source}: sample_prompts file {text!r} not found: training without sample images",
                      stacklevel=3)
        return []
    return read_prompt_file(path)


def read_prompt_file(path: Path) -> list[str]:
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]
        if suffix == ".toml":
            data = tomllib.loads(raw)["prompt"]
            entries = [{**data, **subset} for subset in data.get("subset", [])]
        else:
            entries = json.loads(raw)
    except (OSError, UnicodeDecodeError, KeyError, TypeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise TrainerError(f"sample_prompts file {path} cannot be read as kohya's prompt format: {err}") from None
    if not isinstance(entries, list):
        raise TrainerError(f"sample_prompts file {path}: expected a list of prompts.")
    return [entry if isinstance(entry, str) else prompt_line(entry) for entry in entries]


def prompt_line(entry: dict) -> str:
    """A kohya prompt dict (prompt, negative_prompt, width, height, seed, sample_steps, scale,
    sample_sampler) as one of our prompt lines."""
    if not isinstance(entry, dict):
        raise TrainerError(f"sample prompt {entry!r}: expected a text line or a table with 'prompt'.")
    line = str(entry.get("prompt", "")).strip()
    for key, flag in (("negative_prompt", "n"), ("width", "w"), ("height", "h"), ("seed", "d"),
                      ("sample_steps", "s"), ("scale", "l"), ("sample_sampler", "ss")):
        if entry.get(key) not in (None, ""):
            line += f" --{flag} {entry[key]}"
    return line


def kohya_prompt_options(config) -> dict:
    """How kohya encodes sample prompts during training: clip skip and max_token_length as trained."""
    clip_skip = config.clip_skip - 1 if config.clip_skip and config.clip_skip > 1 else None  # diffusers' count
    return {"clip_skip": clip_skip, "max_token_length": config.max_token_length}


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
                         s.width or width, s.height or height, s.sampler or config.sample_sampler,
                         kohya_prompts=kohya_prompt_options(config))
        name = f"sample_{i:02d}{tag}"
        target = inside(folder, f"{config.output_name}_{name}.png")
        files[name], problem = save_with_fallback(lambda path: save_image(path, image), target,
                                                  config.output_name, "sample image")
        if problem:
            log(f"warning: {problem}")
    return files
