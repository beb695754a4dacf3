"""kohya's caption and text-encoder options, read once for the run: what process_caption gets per
sample (from the item's kohya subset, else the run's config), which captions the text cache
encodes up front, and how the text encoder(s) read a caption (max_token_length, weighted_captions).
"""

from __future__ import annotations

import random

from ..data.captions import process_caption, token_warmup_steps
from ..data.subsets import settings_for

# what process_caption reads from a TrainConfig or a kohya Subset (same names and meaning)
CAPTION_FIELDS = ("shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_dropout_rate",
                  "caption_tag_dropout_rate", "caption_separator", "caption_prefix", "caption_suffix",
                  "caption_dropout_every_n_epochs", "enable_wildcard", "token_warmup_min", "secondary_separator")


def caption_kwargs(settings, total_steps: int) -> dict:
    """process_caption's options from a TrainConfig or Subset; token_warmup_step in steps."""
    values = {name: getattr(settings, name) for name in CAPTION_FIELDS}
    values["token_warmup_step"] = token_warmup_steps(float(settings.token_warmup_step or 0), total_steps)
    return values


def caption_at(item, config, rng: random.Random, epoch: int, step: int, total_steps: int) -> str:
    """The caption ``item`` trains with at this epoch (from 1) and step (steps done)."""
    return process_caption(item.caption, rng, epoch=epoch, step=step,
                           **caption_kwargs(settings_for(item, config), total_steps))


def cache_captions(items, config) -> list[str]:
    """The captions a text-encoder cache encodes before training: each caption with its fixed edits
    (first line, prefix, suffix, separators), and "" when some epochs drop every caption. What varies
    per step (wildcards) is encoded when it first appears."""
    out, empty = [], False
    for item in items:
        kwargs = caption_kwargs(settings_for(item, config), 0)
        empty = empty or bool(kwargs["caption_dropout_every_n_epochs"] or kwargs["caption_dropout_rate"])
        kwargs.update(caption_dropout_every_n_epochs=0, caption_dropout_rate=0.0)
        out.append(process_caption(item.caption, random.Random(0), **kwargs))
    return out + ([""] if empty else [])


def text_options(config, family, log=print) -> dict:
    """encode_text's max_token_length / weighted for this family: {} when kohya's defaults apply (so
    cache keys stay as before); Kolors' ChatGLM takes neither (a note says so)."""
    options = {}
    if config.max_token_length not in (None, 0, 75):
        options["max_token_length"] = int(config.max_token_length)
    if config.weighted_captions:
        options["weighted"] = True
    if family.name == "kolors" and options:
        if "max_token_length" in options:
            log(f"note: max_token_length = {config.max_token_length} is for CLIP text encoders; Kolors' ChatGLM "
                "reads up to 256 tokens of every caption anyway")
        if options.get("weighted"):
            log("note: weighted_captions: Kolors' ChatGLM takes no per-token weights; the (word:1.2) marks are "
                "removed and the words train at weight 1")
        return {"weighted": True} if options.get("weighted") else {}
    return options
