"""Dataset report: what a dataset holds before you spend hours training on it.

* counts: images, captioned, missing / empty captions, per kohya folder with its repeats;
* a resolution histogram (bands of the shorter side, and orientation), and with
  ``enable_bucket`` how many images land in each training bucket;
* images below the training size: the trainer enlarges them (blurry, soft results); each is
  listed with the factor it gets scaled up by;
* near-duplicates by perceptual hash (``imagehash.phash``, 64 bits): two images whose hashes
  differ in at most ``dup_threshold`` bits (default 6, i.e. >= ~90% of the bits agree) are
  reported as a pair. 0 means the same picture (re-encoded or resized); up to ~6 covers re-saves,
  small crops and colour/brightness tweaks while unrelated photos sit around 32 (half the bits).
  Mirror images and large crops are not caught: phash is not flip- or crop-invariant.
  Flat, single-colour images all hash alike and would pair with each other;
* tag frequency (top N, tags compared as the Caption Editor compares them);
* estimated steps = ceil(images x repeats [x 2 with regularization images] / batch) x epochs,
  rounded up per bucket with ``enable_bucket`` and divided by gradient accumulation, as the
  trainer counts them.

Each image is decoded exactly once (size and hash come from the same decode); unreadable images
and captions are listed, not raised, so one report shows every problem.
``report_text`` renders it as plain text, ``report_image`` as a summary card (PIL image) that a
ComfyUI node can show.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TrainerError
from .caption_edit import split_tags, tag_key
from .caption_encoding import caption_problem, read_caption_file
from .caption_files import _caption_path
from .dataset import CAPTION_LISTS, KOHYA_FOLDER
from .images import IMAGE_EXTENSIONS, open_rgb
from .report_masks import MaskFindings, mask_findings
DUP_THRESHOLD = 6
SIZE_BANDS = (0, 512, 768, 1024, 1536, 2048)  # shorter-side bands: "<512", "512-767", ..., ">=2048"


@dataclass
class ImageInfo:
    path: Path
    folder: str  # kohya folder name, "" for the root
    repeats: int
    size: tuple[int, int] | None  # (width, height); None if unreadable
    caption: str  # the caption file's text ("" when missing/empty/unreadable)
    caption_state: str  # "ok" | "missing" | "empty" | "unreadable"
    phash: int | None = None
    is_reg: bool = False
    problem: str = ""  # why the caption file could not be read


@dataclass
class FolderCount:
    name: str
    repeats: int
    images: int
    captioned: int

    @property
    def samples(self) -> int:
        return self.images * self.repeats


@dataclass
class Report:
    root: Path
    resolution: tuple[int, int]  # training (width, height)
    images: int
    captioned: int
    missing_captions: list[Path]
    empty_captions: list[Path]
    folders: list[FolderCount]
    size_histogram: dict[str, int]  # shorter-side band -> count
    orientation: dict[str, int]  # portrait / square / landscape -> count
    buckets: dict[tuple[int, int], int] | None  # with enable_bucket: bucket (w, h) -> images
    small_images: list[tuple[Path, tuple[int, int], float]]  # (image, size, upscale factor)
    near_duplicates: list[tuple[Path, Path, int]]  # (image, image, Hamming distance)
    dup_threshold: int
    tag_frequency: list[tuple[str, int]]  # (tag, images it occurs in), most frequent first
    epochs: int
    batch_size: int
    samples_per_epoch: int
    steps_per_epoch: int
    estimated_steps: int
    reg_images: int = 0
    unreadable_images: list[tuple[Path, str]] = field(default_factory=list)
    caption_problems: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    masks: MaskFindings = field(default_factory=MaskFindings)  # loss masks: coverage and warnings
    parts: list[str] = field(default_factory=list)  # several datasets (Dataset Merge): each one's count


# ---------------------------------------------------------------------------------------------
# collecting


def _read_caption_file(path: Path, notes: list[str] | None = None) -> tuple[str, str, str]:
    """(caption, state, problem); a caption read in another encoding than UTF-8 is noted."""
    if not path.is_file():
        return "", "missing", ""
    try:
        decoded = read_caption_file(path)
    except (UnicodeDecodeError, OSError) as err:
        return "", "unreadable", caption_problem(err)
    if not decoded.is_utf8 and notes is not None:
        notes.append(f"caption {path.parent.name}/{path.name} is not UTF-8: read as {decoded.encoding}")
    text = decoded.text.strip()
    return text, ("ok" if text else "empty"), ""


def _scan_folder(root: Path, repeats: int, caption_extension: str, notes: list[str]) -> list[ImageInfo]:
    """load_dataset's layout (root images + N_name subfolders, or a metadata list) without
    decoding anything yet."""
    for name in CAPTION_LISTS:
        if (root / name).is_file():
            from .captions import read_caption_list

            notes.append(f"captions from {name}")
            return [ImageInfo(p, "", repeats, None, c.strip(), "ok" if c.strip() else "empty")
                    for p, c in read_caption_list(root / name, root)]
    folders = [(root, repeats, "")]
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = KOHYA_FOLDER.match(sub.name)
        if not match or int(match.group(1)) < 1:
            notes.append(f"ignored folder {sub.name}: name it like 10_{sub.name} (10 repeats) to train it")
            continue
        folders.append((sub, int(match.group(1)), sub.name))
    infos = []
    for folder, reps, label in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
            caption, state, problem = _read_caption_file(_caption_path(path, caption_extension), notes)
            infos.append(ImageInfo(path, label, reps, None, caption, state, problem=problem))
    return infos


def _from_dataset(dataset, caption_extension: str) -> list[ImageInfo]:
    """ImageInfos for a loaded Dataset; caption state from the files (a missing caption shows as
    the class token in the Dataset)."""
    listed = any((Path(dataset.root) / name).is_file() for name in CAPTION_LISTS)
    infos = []
    for item in dataset.items:
        if listed:
            caption, state, problem = item.caption, ("ok" if item.caption else "empty"), ""
        else:
            caption, state, problem = _read_caption_file(_caption_path(Path(item.path), caption_extension))
        infos.append(ImageInfo(Path(item.path), item.folder, item.repeats, None, caption, state,
                               is_reg=item.is_reg, problem=problem))
    return infos


def _phash(img: Image.Image) -> int:
    try:
        import imagehash
    except ImportError:
        raise TrainerError("The dataset report needs imagehash: pip install imagehash (in requirements.txt)") from None

    return int(str(imagehash.phash(img)), 16)


def _decode_all(infos: list[ImageInfo], unreadable: list[tuple[Path, str]]) -> None:
    """The one decode per image: size (upright) and perceptual hash."""
    for info in infos:
        try:
            img = open_rgb(info.path)
        except TrainerError as err:
            unreadable.append((info.path, str(err)))
            continue
        info.size = img.size
        info.phash = _phash(img)
        img.close()


def near_duplicates(hashes: list[tuple[Path, int]], threshold: int = DUP_THRESHOLD) -> list[tuple[Path, Path, int]]:
    """Pairs of images whose 64-bit hashes differ in at most ``threshold`` bits, closest first."""
    if len(hashes) < 2:
        return []
    values = np.array([h for _, h in hashes], dtype=np.uint64)
    pairs = []
    for i in range(len(values) - 1):
        xor = (values[i + 1:] ^ values[i]).view(np.uint8).reshape(-1, 8)
        dist = np.unpackbits(xor, axis=1).sum(axis=1)
        for j in np.nonzero(dist <= threshold)[0]:
            pairs.append((hashes[i][0], hashes[i + 1 + int(j)][0], int(dist[j])))
    return sorted(pairs, key=lambda p: (p[2], str(p[0]), str(p[1])))


def _band(short_side: int) -> str:
    for lo, hi in zip(SIZE_BANDS, SIZE_BANDS[1:]):
        if short_side < hi:
            return f"<{hi}" if lo == 0 else f"{lo}-{hi - 1}"
    return f">={SIZE_BANDS[-1]}"


def _upscale(size: tuple[int, int], resolution: tuple[int, int], choice) -> float:
    """How much the trainer enlarges the image (1.0 = not at all)."""
    if choice is not None:
        return choice.resized_size[0] / size[0]
    return max(resolution[0] / size[0], resolution[1] / size[1])


def _parse_resolution(resolution) -> tuple[int, int]:
    """(width, height) by the trainer's own rules (one size or width,height; multiples of 64)."""
    from ..config import TrainConfig

    if isinstance(resolution, (tuple, list)):
        resolution = ",".join(str(v) for v in resolution)
    return TrainConfig(resolution=str(resolution)).size()


def dataset_report(source, resolution=1024, epochs: int = 1, batch_size: int = 1, repeats: int = 1,
                   caption_extension: str = ".txt", enable_bucket: bool = False, min_bucket_reso: int = 256,
                   max_bucket_reso: int = 1024, bucket_reso_steps: int = 64, bucket_no_upscale: bool = False,
                   gradient_accumulation_steps: int = 1, dup_threshold: int = DUP_THRESHOLD,
                   top_tags: int = 20, alpha_mask: bool = False) -> Report:
    """Report on ``source``: a dataset folder (laid out as load_dataset reads it; ``repeats`` for
    images in its root) or a loaded Dataset (regularization images count in the steps only).
    A Dataset's loss masks are reported (``alpha_mask``: images without a mask file use their
    alpha channel); with several datasets (Dataset Merge) the steps are the trainer's count, per
    dataset at its own settings."""
    if epochs < 1 or batch_size < 1 or gradient_accumulation_steps < 1:
        raise TrainerError("epochs, batch_size and gradient_accumulation_steps must be 1 or more.")
    res = _parse_resolution(resolution)
    notes: list[str] = []
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.is_dir():
            raise TrainerError(f"Dataset folder not found: {root}. Point the report at a folder of images.")
        infos = _scan_folder(root, repeats, caption_extension, notes)
    else:
        root = Path(source.root)
        infos = _from_dataset(source, caption_extension)
        notes += list(getattr(source, "notes", []))
    unreadable: list[tuple[Path, str]] = []
    _decode_all(infos, unreadable)
    caption_problems = [(_caption_path(i.path, caption_extension), i.problem) for i in infos if i.problem]
    train = [i for i in infos if not i.is_reg and i.size is not None]
    regs = [i for i in infos if i.is_reg and i.size is not None]

    folders: dict[str, FolderCount] = {}
    for info in train:
        fc = folders.setdefault(info.folder, FolderCount(info.folder or "(root)", info.repeats, 0, 0))
        fc.images += 1
        fc.captioned += info.caption_state == "ok"

    hist = Counter(_band(min(i.size)) for i in train)
    orientation = Counter("square" if i.size[0] == i.size[1] else "landscape" if i.size[0] > i.size[1]
                          else "portrait" for i in train)

    choices = {}
    if enable_bucket:
        from .buckets import assign_bucket, make_buckets

        table = make_buckets(res, min_bucket_reso, max_bucket_reso, bucket_reso_steps)
        choices = {id(i): assign_bucket(i.size, table, bucket_no_upscale, step=bucket_reso_steps)
                   for i in train + regs}
    small = []
    for info in train:
        factor = _upscale(info.size, res, choices.get(id(info)))
        if factor > 1.0 + 1e-9:
            small.append((info.path, info.size, round(factor, 3)))

    tag_counts: Counter = Counter()
    spellings: dict[str, Counter] = defaultdict(Counter)
    for info in train:
        tags = split_tags(info.caption.partition("\n")[0])
        for key in {tag_key(t) for t in tags}:
            tag_counts[key] += 1
        for tag in tags:
            spellings[tag_key(tag)][tag] += 1
    top = [(spellings[k].most_common(1)[0][0], n)
           for k, n in sorted(tag_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_tags]]

    train_samples = sum(i.repeats for i in train)
    reg_samples = train_samples if regs else 0
    samples = train_samples + reg_samples
    if enable_bucket:
        per_bucket: Counter = Counter()
        for info in train:
            per_bucket[choices[id(info)].bucket] += info.repeats
        # kohya cycles the regularization set up to the training count; spread it as the images are
        reg_cycle = [choices[id(i)].bucket for i in regs for _ in range(i.repeats)]
        for k in range(reg_samples):
            per_bucket[reg_cycle[k % len(reg_cycle)]] += 1
        batches = sum(math.ceil(n / batch_size) for n in per_bucket.values())
        buckets = dict(sorted(Counter(choices[id(i)].bucket for i in train).items()))
    else:
        batches = math.ceil(samples / batch_size)
        buckets = None
    steps_per_epoch = math.ceil(batches / gradient_accumulation_steps)

    masks, parts = MaskFindings(), []
    if not isinstance(source, (str, Path)):
        masks = mask_findings(_with_alpha(source.items) if alpha_mask else source.items)
        parts, counted = _part_counts(source, res, epochs, batch_size, gradient_accumulation_steps)
        if counted:
            samples, steps_per_epoch = counted
    return Report(
        root=root, resolution=res, images=len(train), captioned=sum(i.caption_state == "ok" for i in train),
        missing_captions=[i.path for i in train if i.caption_state == "missing"],
        empty_captions=[i.path for i in train if i.caption_state == "empty"],
        folders=list(folders.values()), size_histogram={b: hist[b] for b in _band_names() if hist[b]},
        orientation=dict(orientation), buckets=buckets, small_images=small,
        near_duplicates=near_duplicates([(i.path, i.phash) for i in train + regs], dup_threshold),
        dup_threshold=dup_threshold, tag_frequency=top, epochs=epochs, batch_size=batch_size,
        samples_per_epoch=samples, steps_per_epoch=steps_per_epoch, estimated_steps=steps_per_epoch * epochs,
        reg_images=len(regs), unreadable_images=unreadable, caption_problems=caption_problems, notes=notes,
        masks=masks, parts=parts)


def _with_alpha(items) -> list:
    from dataclasses import replace

    from .masks import ALPHA

    return [item if item.mask is not None else replace(item, mask=ALPHA) for item in items]


def _part_counts(dataset, res, epochs: int, batch_size: int, accumulation: int):
    """(one line per dataset, (samples, steps per epoch)) as the trainer counts a merged dataset
    (its keys, the rest from these settings); ([], None) without several datasets."""
    from ..config import TrainConfig
    from ..train.bucketing import assign_buckets, part_lines, steps_per_epoch
    from .merge import resolve_parts
    from .subsets import parts_of

    if not parts_of(dataset.items):
        return [], None
    config = TrainConfig(resolution=f"{res[0]},{res[1]}", train_batch_size=batch_size, max_train_epochs=epochs,
                         gradient_accumulation_steps=accumulation)
    resolved = resolve_parts(dataset, config)
    buckets = assign_buckets(resolved, config)
    batches = steps_per_epoch(resolved, buckets, batch_size)
    return part_lines(resolved, buckets), (resolved.num_samples, math.ceil(batches / accumulation))


def _band_names() -> list[str]:
    return [_band(lo) for lo in SIZE_BANDS]
