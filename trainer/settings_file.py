"""Reading a settings file (kohya TOML, kohya_ss GUI JSON) with messages that name the file."""

from __future__ import annotations

from pathlib import Path

from .errors import TrainerError


def read_settings(path: Path, parse, errors: tuple, kind: str):
    """``parse`` of the file's text; a missing file or ``errors`` become one TrainerError line."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerError(f"Config file not found: {path}") from None
    except errors as err:
        raise TrainerError(f"{path} is not valid {kind}: {err}") from None
