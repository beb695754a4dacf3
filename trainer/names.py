"""User-given names (output_name, a LoRA Save name) made into one safe file-name component.

A shared TOML or a workflow is input we do not control: ``output_name = "../../escaped"`` must not
write two folders up, and a name that works on Linux must still be a valid file on Windows.
``safe_name`` is the one place this is decided; ``inside`` guards the final path.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from .errors import TrainerError

MAX_CHARS = 64  # the name appears twice in ComfyUI paths (run folder + file); Windows' MAX_PATH is 260
MAX_BYTES = 180  # ext4 and most others allow 255 UTF-8 bytes per component; suffixes need the rest
# characters Windows forbids in file names, besides the path separators
FORBIDDEN = re.compile(r'[<>:"|?*]')
# CON, PRN, AUX, NUL, COM0-9, LPT0-9 (and the superscript digits Windows also reserves)
RESERVED = re.compile(r"^(con|prn|aux|nul|conin\$|conout\$|(com|lpt)[0-9¹²³])$", re.IGNORECASE)
DRIVE = re.compile(r"^[A-Za-z]:$")


def safe_name(name, default: str = "lora") -> str:
    """``name`` as a single file-name component that is valid on Linux, macOS and Windows.

    Path parts are joined with "_" (``a/b`` -> ``a_b``) after dropping ``.``, ``..``, empty parts
    and a drive (``C:``), so ``../../x``, ``/etc/x`` and ``C:\\x`` all become ``x`` / ``etc_x``.
    Control characters and ``<>:"|?*`` become "_", leading dots (hidden files) and trailing dots
    and spaces (Windows drops them) go, reserved device names get a "_" (``con`` -> ``con_``),
    and the result is capped in length. Letters of any script (中文, é) are kept. An empty
    result gives ``default``.
    """
    text = unicodedata.normalize("NFC", str(name or ""))
    text = "".join("_" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)
    parts = [p.strip() for p in re.split(r"[/\\]", text)]
    parts = [p for p in parts if p not in ("", ".", "..")]
    if parts and DRIVE.match(parts[0]):
        parts = parts[1:]
    text = FORBIDDEN.sub("_", "_".join(parts))
    text = _trim(text.lstrip(". ")[:MAX_CHARS])
    while len(text.encode("utf-8")) > MAX_BYTES:
        text = _trim(text[:-1])
    if not text:
        text = default
    if RESERVED.match(text.split(".")[0].rstrip(" ")):
        stem, dot, rest = text.partition(".")
        text = f"{stem}_{dot}{rest}"
    return text


def _trim(text: str) -> str:
    return text.rstrip(". ")


def inside(folder, file_name: str) -> Path:
    """``folder / file_name``, refused unless it is a direct child of ``folder`` (resolved)."""
    folder = Path(folder)
    path = folder / file_name
    if (file_name in ("", ".", "..") or "/" in file_name or "\\" in file_name
            or path.parent.resolve() != folder.resolve()):
        raise TrainerError(f"'{file_name}' is not a plain file name: it would be written outside {folder}. "
                           "Use a name without path separators or '..'.")
    return path


def free_file(folder, stem: str, suffix: str = ".safetensors", overwrite: bool = False) -> Path:
    """``folder/<stem><suffix>``, or ``<stem>_1``, ``_2`` ... while that name is taken (unless
    ``overwrite``): a saved file never replaces another one."""
    path = inside(folder, f"{stem}{suffix}")
    n = 1
    while path.exists() and not overwrite:
        path, n = inside(folder, f"{stem}_{n}{suffix}"), n + 1
    return path
