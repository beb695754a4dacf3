"""Caption processing per sample (kohya's process_caption) and DiffSynth-style caption lists.

``process_caption`` follows kohya-ss/sd-scripts (train_util.BaseDataset.process_caption), in its
order:

* caption_prefix / caption_suffix: joined to the caption with a space ("prefix caption suffix"),
  before anything else, so they shuffle and drop with the tags unless keep_tokens covers them.
* caption_dropout_rate: with this probability the whole caption becomes "" (unconditional
  training); caption_dropout_every_n_epochs = N: every Nth epoch (epochs counted from 1) all
  captions are "".
* enable_wildcard: a multi-line caption trains one of its (non-empty) lines, a random one each
  time; ``{a|b|c}`` is replaced by one of a, b, c each time; ``{{`` and ``}}`` are literal braces.
  Without it a multi-line caption uses its first line.
* the caption is split on ``caption_separator`` (","), tags stripped.
* keep_tokens: the first N tags stay in place; the rest are the shuffled part.
* keep_tokens_separator (e.g. "|||"): everything before it is fixed, everything after it is
  shuffled; a second separator starts a fixed suffix (``fixed ||| shuffled ||| suffix``). When the
  separator is present it wins over keep_tokens.
* token_warmup_step (a step count; below 1 a share of the run's steps) with token_warmup_min:
  before that step only the first ``floor(step x (tags - min) / warmup) + min`` shuffled-part
  tags are kept (cut before shuffling), so a caption grows from ``min`` tags to all of them.
* shuffle_caption: shuffle the flexible tags (seed 000: "cuanto más cerca esté una etiqueta del
  principio, mayor será su peso. Por lo tanto, normalmente se recomienda activar Shuffle Caption").
* caption_tag_dropout_rate: each flexible tag is dropped with this probability (after the
  shuffle); fixed tags are never dropped.
* the result is joined with ", " (as kohya does, whatever the separator).
* secondary_separator (e.g. ";;;"): joins tags that move and drop as one ("red hair;;;blue eyes");
  at the end it becomes caption_separator.

Deliberate differences: kohya leaves a keep_tokens_separator in the text when neither shuffling
nor tag dropout is on, so "|||" reaches the text encoder; here it is always removed. Empty tags
(",,") are dropped. With enable_wildcard kohya prefixes only the first line of a multi-line
caption (and suffixes only the last); here every line gets them.

Readers for caption lists next to images (DiffSynth-Studio's layout used by seed 001):
``metadata.csv`` with columns file_name,text and ``metadata.jsonl`` with one object per line
({"file_name" or "image": ..., "text" or "caption": ...}). Paths are relative to the list's folder.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

from ..errors import TrainerError

IMAGE_KEYS = ("file_name", "image", "file", "path")
TEXT_KEYS = ("text", "caption", "prompt")
_WILDCARD = re.compile(r"\{([^}]+)\}")


def _split(text: str, separator: str) -> list[str]:
    return [t.strip() for t in text.split(separator) if t.strip()]


def _wildcards(caption: str, rng: random.Random) -> str:
    """One random line, then each ``{a|b}`` -> a or b; ``{{`` / ``}}`` stay literal braces."""
    lines = [line.strip() for line in caption.split("\n") if line.strip()]
    if len(lines) > 1:
        caption = rng.choice(lines)
    elif lines:
        caption = lines[0]
    open_mark, close_mark = "\u2985", "\u2986"  # placeholders that are not in the text
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = _WILDCARD.sub(lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def token_warmup_steps(token_warmup_step: float, total_steps: int) -> int:
    """kohya's token_warmup_step: a step count, or below 1 a share of the run (floored)."""
    if token_warmup_step < 1:
        return math.floor(token_warmup_step * total_steps)
    return int(token_warmup_step)


def process_caption(caption: str, rng: random.Random, shuffle_caption: bool = False, keep_tokens: int = 0,
                    keep_tokens_separator: str = "", caption_dropout_rate: float = 0.0,
                    caption_tag_dropout_rate: float = 0.0, caption_separator: str = ",", *,
                    caption_prefix: str = "", caption_suffix: str = "", caption_dropout_every_n_epochs: int = 0,
                    epoch: int = 1, enable_wildcard: bool = False, token_warmup_min: int = 1,
                    token_warmup_step: int = 0, step: int = 0, secondary_separator: str = "") -> str:
    """The caption one training sample sees this time (see the module docstring for the rules).
    ``rng`` is a ``random.Random`` owned by the caller (seed it for reproducible runs); ``epoch``
    counts from 1, ``step`` is the number of optimizer steps done; ``token_warmup_step`` is in
    steps (token_warmup_steps() turns kohya's ratio into steps)."""
    for name, rate in (("caption_dropout_rate", caption_dropout_rate),
                       ("caption_tag_dropout_rate", caption_tag_dropout_rate)):
        if not 0.0 <= float(rate) <= 1.0:
            raise TrainerError(f"{name} must be between 0 and 1 (got {rate}); 0.05-0.1 is usual.")
    if keep_tokens < 0:
        raise TrainerError(f"keep_tokens must be 0 or more (got {keep_tokens}); 1 keeps the trigger word first.")
    if not caption_separator:
        raise TrainerError("caption_separator must not be empty: use ',' for tag captions.")

    caption = caption or ""
    if enable_wildcard:  # every line gets the prefix and suffix, whichever is drawn
        caption = "\n".join(line for line in caption.split("\n") if line.strip())
    else:
        caption = caption.split("\n")[0]
    if caption_prefix:
        caption = "\n".join(f"{caption_prefix} {line}" for line in caption.split("\n"))
    if caption_suffix:
        caption = "\n".join(f"{line} {caption_suffix}" for line in caption.split("\n"))
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    if caption_dropout_every_n_epochs > 0 and epoch % caption_dropout_every_n_epochs == 0:
        return ""
    caption = _wildcards(caption, rng) if enable_wildcard else caption
    has_separator = bool(keep_tokens_separator) and keep_tokens_separator in caption
    if shuffle_caption or caption_tag_dropout_rate > 0 or token_warmup_step > 0 or has_separator:
        caption = _tags(caption, rng, shuffle_caption, keep_tokens, keep_tokens_separator if has_separator else "",
                        caption_tag_dropout_rate, caption_separator, token_warmup_min, token_warmup_step, step)
    else:
        caption = caption.strip()
    if secondary_separator:
        caption = caption.replace(secondary_separator, caption_separator)
    return caption


def _tags(caption, rng, shuffle_caption, keep_tokens, keep_tokens_separator, caption_tag_dropout_rate,
          caption_separator, token_warmup_min, token_warmup_step, step) -> str:
    """Fixed and flexible tags; the flexible ones warmed up, shuffled and dropped; joined with ", "."""
    suffix: list[str] = []
    if keep_tokens_separator:
        fixed_part, flex_part = caption.split(keep_tokens_separator, 1)
        if keep_tokens_separator in flex_part:
            flex_part, suffix_part = flex_part.split(keep_tokens_separator, 1)
            suffix = _split(suffix_part.replace(keep_tokens_separator, caption_separator), caption_separator)
        fixed, flex = _split(fixed_part, caption_separator), _split(flex_part, caption_separator)
    else:
        tokens = _split(caption, caption_separator)
        fixed, flex = tokens[:keep_tokens], tokens[keep_tokens:]

    if token_warmup_step and step < token_warmup_step:
        flex = flex[:math.floor(step * (len(flex) - token_warmup_min) / token_warmup_step) + token_warmup_min]
    if shuffle_caption:
        rng.shuffle(flex)
    if caption_tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= caption_tag_dropout_rate]
    return ", ".join(fixed + flex + suffix)


# -- caption lists ----------------------------------------------------------------------------------
def _pick(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    return None


def _resolve(base: Path, name: str, where: str) -> Path:
    path = Path(name)
    if not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise TrainerError(f"{where}: image '{name}' not found (looked for {path}); fix the file name or add the image.")
    return path


def read_metadata_csv(path, image_root=None) -> list[tuple[Path, str]]:
    """DiffSynth's ``metadata.csv`` (header ``file_name,text``; UTF-8 with or without BOM;
    ``image``/``caption`` accepted as column names). Image paths are relative to ``image_root``
    (default: the CSV's folder). Returns [(image path, caption)] in file order."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise TrainerError(f"Caption list not found: {path}") from None
    out: list[tuple[Path, str]] = []
    with handle:
        reader = csv.DictReader(handle)
        try:
            header = [h.strip() for h in (reader.fieldnames or [])]
        except UnicodeDecodeError as err:
            raise TrainerError(f"{path} is not UTF-8 ({err.reason}); re-save it as UTF-8.") from None
        reader.fieldnames = header
        image_key = next((k for k in IMAGE_KEYS if k in header), None)
        text_key = next((k for k in TEXT_KEYS if k in header), None)
        if image_key is None or text_key is None:
            raise TrainerError(f"{path}: the first line must name the columns file_name,text (found: "
                               f"{','.join(header) or 'nothing'}).")
        try:
            for row in reader:
                line = reader.line_num
                name = (row.get(image_key) or "").strip()
                if not name:
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue  # blank line
                    raise TrainerError(f"{path} line {line}: empty {image_key}; every row needs an image file name.")
                text = row.get(text_key)
                out.append((_resolve(base, name, f"{path} line {line}"), (text or "").strip()))
        except UnicodeDecodeError as err:
            raise TrainerError(f"{path} is not UTF-8 ({err.reason}); re-save it as UTF-8.") from None
        except csv.Error as err:
            raise TrainerError(f"{path} line {reader.line_num}: malformed CSV ({err}).") from None
    if not out:
        raise TrainerError(f"{path} lists no images: add rows like 001.png,\"a photo of ...\".")
    return out


def read_metadata_jsonl(path, image_root=None) -> list[tuple[Path, str]]:
    """One JSON object per line: {"file_name"|"image": ..., "text"|"caption": ...}; blank lines
    skipped; UTF-8 with or without BOM. Paths relative to ``image_root`` (default: the file's folder)."""
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise TrainerError(f"Caption list not found: {path}") from None
    except UnicodeDecodeError as err:
        raise TrainerError(f"{path} is not UTF-8 ({err.reason} at byte {err.start}); re-save it as UTF-8.") from None
    out: list[tuple[Path, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainerError(f"{where}: not valid JSON ({err.msg} at column {err.colno}).") from None
        if not isinstance(row, dict):
            raise TrainerError(f'{where}: expected an object like {{"file_name": "001.png", "text": "..."}}.')
        name = _pick(row, IMAGE_KEYS)
        if not isinstance(name, str) or not name.strip():
            raise TrainerError(f'{where}: no "file_name" (or "image") string.')
        text = _pick(row, TEXT_KEYS)
        if text is not None and not isinstance(text, str):
            raise TrainerError(f'{where}: "text" must be a string (got {type(text).__name__}).')
        out.append((_resolve(base, name.strip(), where), (text or "").strip()))
    if not out:
        raise TrainerError(f'{path} lists no images: add lines like {{"file_name": "001.png", "text": "..."}}.')
    return out


def read_caption_list(path, image_root=None) -> list[tuple[Path, str]]:
    """``read_metadata_csv`` for .csv, ``read_metadata_jsonl`` for .jsonl / .json-lines files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_metadata_csv(path, image_root)
    if suffix in (".jsonl", ".ndjson"):
        return read_metadata_jsonl(path, image_root)
    raise TrainerError(f"{path}: caption lists must be metadata.csv (file_name,text) or .jsonl.")
