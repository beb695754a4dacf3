"""Dataset v1: a folder of images with same-name caption files, kohya's "N_name" subfolders.

    my_dataset/
      10_ltchar/       -> 10 repeats, class token "ltchar"
        001.png
        001.txt        -> caption (UTF-8 with or without BOM, or any encoding charset-normalizer
                          detects; the encoding used is noted)
      extra.jpg        -> images in the root use dataset_repeats and the configured trigger word

Everything is checked before training starts, so bad files stop the run with one message naming
every one of them (and what is wrong with each) instead of failing hours later.
"""

from __future__ import annotations

import re
from collections import Counter
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrainerError
from .caption_encoding import caption_problem, read_caption_file
from .images import IMAGE_EXTENSIONS, UnreadableImage, open_rgb, unreadable_message
from .subsets import Subset, kohya_reg_repeats

KOHYA_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass
class ImageItem:
    path: Path
    caption: str
    repeats: int
    folder: str  # the subfolder name (kohya's dataset dir), "" for the root
    is_reg: bool = False  # a regularization (prior) image
    size: tuple[int, int] = (0, 0)  # (width, height), upright
    # set when this file is a crop made by Smart Crop: the source's (height, width) and the crop's
    # (top, left), which SDXL/Kolors time ids should see instead of the cropped file's own
    source_size: tuple[int, int] | None = None
    source_crop: tuple[int, int] | None = None
    # kohya's subset (subsets.py) with its caption, augmentation and resolution settings; None:
    # the run's TrainConfig applies
    subset: Subset | None = None
    # the loss mask (masks.py): a mask file, masks.ALPHA (the image's alpha channel) or None
    mask: Path | str | None = None


@dataclass
class Dataset:
    root: Path
    items: list[ImageItem]
    notes: list[str] = field(default_factory=list)  # skipped files, ignored folders
    trigger: str = ""  # the caption of root images without a caption file (Dataset Merge: class_tokens)

    @property
    def train_items(self) -> list[ImageItem]:
        return [item for item in self.items if not item.is_reg]

    @property
    def num_images(self) -> int:
        return len(self.train_items)

    @property
    def num_reg_images(self) -> int:
        return len(self.items) - self.num_images

    @property
    def num_train_samples(self) -> int:
        return sum(item.repeats for item in self.train_items)

    @property
    def num_samples(self) -> int:
        """One epoch: training images x repeats, plus about as many regularization samples (kohya
        repeats the regularization set until it matches the training samples)."""
        return self.num_train_samples + len(self.reg_sequence())

    def reg_sequence(self) -> list[int]:
        """kohya's balancing (subsets.kohya_reg_repeats), per kohya dataset (part): each
        regularization image index as many times as it trains per epoch."""
        groups: dict[int, list[int]] = {}  # items without a subset: one more kohya dataset
        for i, item in enumerate(self.items):
            groups.setdefault(id(item.subset.part) if item.subset is not None else 0, []).append(i)
        out: list[int] = []
        for group in groups.values():
            regs = [i for i in group if self.items[i].is_reg]
            train = sum(self.items[i].repeats for i in group if not self.items[i].is_reg)
            for i, count in zip(regs, kohya_reg_repeats(train, [self.items[i].repeats for i in regs])):
                out += [i] * count
        return out

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per dataset folder, how often each comma-separated tag occurs."""
        freq: dict[str, Counter] = {}
        for item in self.train_items:
            tags = [t.strip() for t in item.caption.split(",") if t.strip()]
            freq.setdefault(item.folder or self.root.name, Counter()).update(tags)
        return {k: dict(v) for k, v in freq.items()}


class _Checks:
    """What a dataset scan found wrong (every file, not the first) and the encodings it used."""

    def __init__(self, notes: list):
        self.notes, self.problems = notes, []

    def image_size(self, path: Path) -> tuple[int, int]:
        """Fully decode once: catches corrupt and truncated files up front; (width, height)."""
        try:
            return open_rgb(path).size
        except UnreadableImage as err:
            self.problems.append((path, err.reason))
            return (0, 0)

    def caption(self, path: Path) -> str:
        try:
            decoded = read_caption_file(path)
        except (UnicodeDecodeError, OSError) as err:
            self.problems.append((path, caption_problem(err)))
            return ""
        if not decoded.is_utf8:
            self.notes.append(f"caption {path.parent.name}/{path.name} is not UTF-8: read as {decoded.encoding} "
                              "(re-save it as UTF-8 if the text looks wrong)")
        return decoded.text.strip()

    def raise_if_any(self, root: Path) -> None:
        if self.problems:
            raise TrainerError(unreadable_message(self.problems, root))


def _scan(folder: Path, repeats: int, label: str, trigger: str, caption_ext: str, checks: _Checks) -> list[ImageItem]:
    items = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        suffix = path.suffix.lower()
        if suffix not in IMAGE_EXTENSIONS:
            if suffix != caption_ext.lower() and not path.name.startswith("."):
                checks.notes.append(f"skipped {path.name}: not an image")
            continue
        size = checks.image_size(path)
        caption_file = path.with_suffix(caption_ext)
        caption = checks.caption(caption_file) if caption_file.is_file() else ""
        if not caption:
            caption = trigger
            if not caption:
                checks.notes.append(f"{path.name} has no caption and no trigger word: it trains unconditioned")
        items.append(ImageItem(path, caption, repeats, label, size=size))
    return items


CAPTION_LISTS = ("metadata.csv", "metadata.jsonl")


def _from_caption_list(root: Path, repeats: int, trigger: str) -> Dataset | None:
    """DiffSynth-style datasets: a metadata.csv (file_name,text) or metadata.jsonl beside the images."""
    from .captions import read_caption_list

    for name in CAPTION_LISTS:
        if (root / name).is_file():
            checks = _Checks([f"captions from {name}"])
            items = [ImageItem(path, caption or trigger, repeats, "", size=checks.image_size(path))
                     for path, caption in read_caption_list(root / name, root)]
            if not items:
                raise TrainerError(f"{root / name} lists no images: add rows of file_name,text.")
            checks.raise_if_any(root)
            return Dataset(root, items, checks.notes)
    return None


def load_dataset(root, repeats: int = 1, trigger_word: str = "", caption_extension: str = ".txt") -> Dataset:
    """Scan ``root``; kohya "N_name" subfolders give N repeats and "name" as class token."""
    root = Path(root)
    if not root.is_dir():
        raise TrainerError(f"Dataset folder not found: {root}. Point train_data_dir at a folder of images.")
    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    notes: list[str] = []
    checks = _Checks(notes)
    listed = _from_caption_list(root, repeats, trigger_word)
    if listed is not None:
        return listed
    items = _scan(root, repeats, "", trigger_word, caption_extension, checks)
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = KOHYA_FOLDER.match(sub.name)
        if not match:
            notes.append(f"ignored folder {sub.name}: name it like 10_{sub.name} (10 repeats) to train it")
            continue
        sub_repeats, class_token = int(match.group(1)), match.group(2).replace("_", " ").strip()
        if sub_repeats < 1:
            notes.append(f"ignored folder {sub.name}: 0 repeats")
            continue
        items += _scan(sub, sub_repeats, sub.name, class_token or trigger_word, caption_extension, checks)
    checks.raise_if_any(root)
    if not items:
        skipped = f" ({len(notes)} other files/folders skipped)" if notes else ""
        raise TrainerError(
            f"No training images in {root}{skipped}. Add .png/.jpg/.webp images (with same-name "
            f"{caption_extension} captions), or kohya-style subfolders such as 10_mychar/.")
    return Dataset(root, items, notes, trigger_word)


def split_validation(dataset: Dataset, ratio: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Hold out ``ratio`` of the images (at least one, never all) for a validation loss."""
    if not ratio:
        return dataset, None
    if not 0 < ratio < 1:
        raise TrainerError(f"validation_split {ratio} must be between 0 and 1 (e.g. 0.1 holds out 10%).")
    if dataset.num_images < 2:
        raise TrainerError("validation_split needs at least 2 images: add images or set it to 0.")
    import random

    count = min(dataset.num_images - 1, max(1, round(dataset.num_images * ratio)))
    held = set(random.Random(seed).sample(range(dataset.num_images), count))
    train_items = dataset.train_items
    train = [item for i, item in enumerate(train_items) if i not in held]
    val = [item for i, item in enumerate(train_items) if i in held]
    regs = [item for item in dataset.items if item.is_reg]
    return (dataclasses.replace(dataset, items=train + regs),
            dataclasses.replace(dataset, items=val, notes=[]))


def add_regularization(dataset: Dataset, reg_dir, repeats: int = 1, class_token: str = "",
                       caption_extension: str = ".txt") -> Dataset:
    """Add a regularization folder (captions optional: seed 000 says 10-20 images need none)."""
    regs = load_dataset(reg_dir, repeats, class_token, caption_extension)
    for item in regs.items:
        item.is_reg = True
    notes = dataset.notes + [f"regularization: {n}" for n in regs.notes]
    return Dataset(dataset.root, dataset.items + regs.items, notes, dataset.trigger)
