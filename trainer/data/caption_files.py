"""Caption files on disk: reading them (UTF-8 with or without BOM; any other encoding through
caption_encoding, which names the one it used; problems reported, not raised) and writing them
atomically beside their images, as UTF-8, with a backup of what was overwritten."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import write_bytes, write_text
from ..errors import TrainerError
from .caption_edit import EditedCaption, _entries, _image_and_caption
from .caption_encoding import caption_problem, decode_text, read_caption_file
from .images import IMAGE_EXTENSIONS

BACKUP_FOLDER = ".caption_backups"
@dataclass
class CaptionRead:
    captions: dict[Path, str]  # image -> caption text ("" for a missing or unreadable file)
    missing: list[Path]  # images without a caption file
    problems: list[tuple[Path, str]]  # (caption file, why it could not be read)
    encodings: dict[Path, str] = field(default_factory=dict)  # caption file -> encoding, when not UTF-8


def decode_caption(data: bytes) -> str:
    """The caption text in whatever encoding it was saved (see caption_encoding);
    UnicodeDecodeError when the bytes are no text at all."""
    return decode_text(data).text



def _image_paths(source) -> list[Path]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise TrainerError(f"Dataset folder not found: {root}.")
        from .dataset import KOHYA_FOLDER  # the folders load_dataset trains: root and N_name/

        folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and KOHYA_FOLDER.match(p.name))
        return [p for f in folders for p in sorted(f.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return [_image_and_caption(e)[0] if not isinstance(e, (str, Path)) else Path(e) for e in _entries(source)]


def _caption_path(image: Path, caption_extension: str) -> Path:
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    if caption_extension.lower() in IMAGE_EXTENSIONS or "/" in caption_extension or "\\" in caption_extension:
        raise TrainerError(f"caption_extension {caption_extension!r} is not a caption extension: use .txt or .caption.")
    return image.with_name(image.stem + caption_extension)


def read_captions(source, caption_extension: str = ".txt") -> CaptionRead:
    """Read the caption file of every image of ``source`` (a dataset folder — its root and
    kohya N_name/ subfolders, as load_dataset reads it —, a Dataset, ImageItems or image paths). Files that cannot be
    read are reported in ``problems``, all of them, instead of stopping at the first."""
    captions: dict[Path, str] = {}
    missing: list[Path] = []
    problems: list[tuple[Path, str]] = []
    encodings: dict[Path, str] = {}
    for image in _image_paths(source):
        path = _caption_path(image, caption_extension)
        captions[image] = ""
        if not path.is_file():
            missing.append(image)
            continue
        try:
            decoded = read_caption_file(path)
        except (UnicodeDecodeError, OSError) as err:
            problems.append((path, caption_problem(err)))
            continue
        captions[image] = decoded.text.strip()
        if not decoded.is_utf8:
            encodings[path] = decoded.encoding
    return CaptionRead(captions, missing, problems, encodings)


@dataclass
class CaptionWrite:
    written: list[Path]  # caption files written
    unchanged: list[Path]  # caption files already holding that text (not rewritten)
    backups: list[Path]  # copies of the files that were overwritten


def _safe_caption_path(image: Path, caption_path: Path | None, caption_extension: str) -> Path:
    """The caption file for ``image``; refused unless it sits directly in the image's folder."""
    folder = image.parent
    path = Path(caption_path) if caption_path is not None else _caption_path(image, caption_extension)
    if ".." in path.parts or ".." in image.parts:
        raise TrainerError(f"Refusing to write caption {path}: '..' in the path; captions go beside their image.")
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise TrainerError(f"Refusing to write caption {path}: it is not in the image's folder {folder}.")
    if path.suffix.lower() in IMAGE_EXTENSIONS or path.resolve() == image.resolve():
        raise TrainerError(f"Refusing to write caption {path}: that would overwrite an image.")
    return path


def _backup_folder(folder: Path, stamp: str, made: dict[Path, Path]) -> Path:
    if folder not in made:
        target, n = folder / BACKUP_FOLDER / stamp, 1
        while target.exists():
            n += 1
            target = folder / BACKUP_FOLDER / f"{stamp}-{n}"
        made[folder] = target
    return made[folder]


def _same_text(old: bytes, caption: str) -> bool:
    try:
        return decode_caption(old).strip() == caption
    except UnicodeDecodeError:
        return False


def write_captions(items_with_captions, caption_extension: str = ".txt", backup: bool = True) -> CaptionWrite:
    """Write each caption as UTF-8 (no BOM) beside its image, atomically (trainer.atomic).

    ``items_with_captions``: EditedCaptions (from apply_edits), or (image or ImageItem, caption)
    pairs. Every target is checked before anything is written: a caption path outside its
    image's folder (``..``, a symlink, another folder) or onto an image stops the whole write.
    A file that already holds exactly that text is left alone. With ``backup`` the previous bytes
    of each overwritten file go to ``<folder>/.caption_backups/<timestamp>/`` (see module doc)."""
    plan: list[tuple[Path, str]] = []
    for entry in items_with_captions:
        image, caption = _image_and_caption(entry)
        caption_path = entry.caption_path if isinstance(entry, EditedCaption) else None
        plan.append((_safe_caption_path(image, caption_path, caption_extension), caption.strip()))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folders: dict[Path, Path] = {}
    result = CaptionWrite([], [], [])
    for path, caption in plan:
        old = path.read_bytes() if path.is_file() else None
        if old is not None and _same_text(old, caption):
            result.unchanged.append(path)
            continue
        if backup and old is not None:
            result.backups.append(write_bytes(_backup_folder(path.parent, stamp, folders) / path.name, old))
        result.written.append(write_text(path, caption))
    return result
