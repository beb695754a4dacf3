"""Caption Editor core: edit comma-separated tag captions, then write them back safely.

Seed 000 (SeaArt's guide, "Etiquetado"): remove the fixed features of the subject (e.g. "black
hair", "black eyes") so the trigger word learns them, keep or add what should stay controllable
(clothes, accessories, pose, background), and put the trigger word in the caption; tags nearer
the front weigh more, hence ``trigger_first``.

Matching rules (every edit): a tag matches when it is equal ignoring case, surrounding and
repeated whitespace, and treating "_" as a space ("Black_Hair" == "black  hair"). Tags the edit
does not touch keep the user's spelling exactly; a tag the user passes to an edit (added tag,
replacement, trigger word) is written as the user passed it.

Captions are split on "," and re-joined with ", " (kohya's join). Only the first line is edited:
kohya trains on the first line of a multi-line caption, so any further lines are kept as they are.

Edits are pure functions ``caption -> caption``; ``apply_edits`` runs a list of them over a
dataset (or one image of it) and returns the new captions without touching disk;
``write_captions`` writes them.

Backups: ``write_captions`` copies each caption file it overwrites, byte for byte, into
``<image folder>/.caption_backups/<YYYYmmdd-HHMMSS>/<same name>`` before replacing it. Chosen over
``<name>.txt.bak`` beside the image because:
* the dataset loader skips folders whose name starts with "." but would note every ``.bak`` file
  as "skipped ...: not an image", and kohya/other taggers would see them too;
* one folder per write keeps every earlier version (a second edit would overwrite a single
  ``.bak`` and lose the original) and lets a whole batch edit be undone at once (copy the
  folder's files back);
* it stays inside the image's own folder, like the caption itself: nothing is written elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import TrainerError
from .dataset import CAPTION_LISTS


TagsArg = str | Iterable[str]


# ---------------------------------------------------------------------------------------------
# tags


def tag_key(tag: str) -> str:
    """The form tags are compared in: case-folded, "_" as space, whitespace collapsed."""
    return " ".join(tag.replace("_", " ").split()).casefold()


def split_tags(caption: str) -> list[str]:
    """The tags of a one-line caption, stripped, empty ones dropped (spelling kept)."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Sequence[str]) -> str:
    return ", ".join(tags)


def _as_tags(tags: TagsArg) -> list[str]:
    """Accept "a, b" or ["a", "b"] (a list item may itself hold commas)."""
    if isinstance(tags, str):
        return split_tags(tags)
    out: list[str] = []
    for tag in tags:
        out += split_tags(str(tag))
    return out


def _edit_first_line(caption: str, fn: Callable[[list[str]], list[str]]) -> str:
    caption = caption.strip()
    first, sep, rest = caption.partition("\n")
    edited = join_tags(fn(split_tags(first)))
    return edited + sep + rest if rest.strip() else edited


# ---------------------------------------------------------------------------------------------
# edits (caption -> caption)


def remove_tags(caption: str, tags: TagsArg) -> str:
    """Drop every tag matching one of ``tags`` (e.g. fixed features the trigger word should learn)."""
    keys = {tag_key(t) for t in _as_tags(tags)}
    return _edit_first_line(caption, lambda cur: [t for t in cur if tag_key(t) not in keys])


def add_tags(caption: str, tags: TagsArg, position: str = "end") -> str:
    """Add the ``tags`` the caption does not have yet, at the "end" or the "start" (in the given
    order); tags already present stay where they are."""
    if position not in ("end", "start"):
        raise TrainerError(f'add_tags position must be "end" or "start" (got {position!r}).')

    def edit(cur: list[str]) -> list[str]:
        seen = {tag_key(t) for t in cur}
        new: list[str] = []
        for tag in _as_tags(tags):
            if tag_key(tag) not in seen:
                seen.add(tag_key(tag))
                new.append(tag)
        return new + cur if position == "start" else cur + new

    return _edit_first_line(caption, edit)


def replace_tag(caption: str, old: str, new: str) -> str:
    """Replace every tag matching ``old`` by ``new`` in its place; if ``new`` is then present
    twice, the first one stays. An empty ``new`` removes ``old``."""
    old_key, new_tags = tag_key(old), _as_tags(new)
    if not old_key:
        raise TrainerError("replace_tag needs the tag to replace (got an empty one).")

    def edit(cur: list[str]) -> list[str]:
        out: list[str] = []
        for tag in cur:
            out += new_tags if tag_key(tag) == old_key else [tag]
        return _dedupe(out) if new_tags else out

    return _edit_first_line(caption, edit)


def trigger_first(caption: str, trigger: str) -> str:
    """Put the trigger word first: moved there if present anywhere (any spelling), inserted if
    not; written as ``trigger`` is spelled."""
    trigger = " ".join(trigger.split())
    if not trigger or "," in trigger:
        raise TrainerError(f"Trigger word {trigger!r} must be one non-empty tag without commas, e.g. 'ltchar'.")
    key = tag_key(trigger)
    return _edit_first_line(caption, lambda cur: [trigger] + [t for t in cur if tag_key(t) != key])


def _dedupe(tags: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        if tag_key(tag) not in seen:
            seen.add(tag_key(tag))
            out.append(tag)
    return out


def dedupe(caption: str) -> str:
    """Drop repeated tags; the first occurrence (and its spelling) stays."""
    return _edit_first_line(caption, _dedupe)


def sort_tags(caption: str, keep_first: int = 0) -> str:
    """Sort tags alphabetically (by their compared form), leaving the first ``keep_first`` in
    place (e.g. 1 keeps the trigger word first, as kohya's keep_tokens)."""
    if keep_first < 0:
        raise TrainerError(f"keep_first must be 0 or more (got {keep_first}).")
    return _edit_first_line(caption, lambda cur: cur[:keep_first] + sorted(cur[keep_first:], key=tag_key))


EDITS: dict[str, Callable[..., str]] = {
    "remove_tags": remove_tags,
    "add_tags": add_tags,
    "replace_tag": replace_tag,
    "trigger_first": trigger_first,
    "dedupe": dedupe,
    "sort_tags": sort_tags,
}
_ALIASES = {"remove": "remove_tags", "add": "add_tags", "replace": "replace_tag", "trigger": "trigger_first",
            "sort": "sort_tags"}


def _resolve_edit(edit) -> Callable[[str], str]:
    """An edit is a callable ``caption -> caption``, a tuple ``("remove_tags", "black hair")``
    (name + positional args), or a dict ``{"op": "add_tags", "tags": "smile", "position": "start"}``."""
    if callable(edit):
        return edit
    if isinstance(edit, dict):
        args, kwargs = (), dict(edit)
        name = kwargs.pop("op", None)
    elif isinstance(edit, (tuple, list)) and edit:
        name, args, kwargs = edit[0], tuple(edit[1:]), {}
    else:
        raise TrainerError(f"Caption edit {edit!r} is not understood: use e.g. ('remove_tags', 'black hair').")
    fn = EDITS.get(_ALIASES.get(str(name), str(name)))
    if fn is None:
        raise TrainerError(f"Unknown caption edit {name!r}: use one of {', '.join(EDITS)}.")
    return lambda caption: fn(caption, *args, **kwargs)


def parse_edits(text: str) -> list[tuple]:
    """Edits from a text box, one per line (for a node's widget)::

        remove: black hair, black eyes
        add: smile                # at the end
        add_start: masterpiece
        replace: 1girl -> woman
        trigger: ltchar
        dedupe
        sort: 1                   # keep the first tag in place

    Blank lines and ``#`` comments are ignored."""
    edits: list[tuple] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, arg = (s.strip() for s in line.partition(":"))
        name = name.lower().replace(" ", "_")
        if name in ("remove", "remove_tags"):
            edits.append(("remove_tags", arg))
        elif name in ("add", "add_tags", "add_end"):
            edits.append(("add_tags", arg, "end"))
        elif name == "add_start":
            edits.append(("add_tags", arg, "start"))
        elif name in ("replace", "replace_tag") and "->" in arg:
            old, new = (s.strip() for s in arg.split("->", 1))
            edits.append(("replace_tag", old, new))
        elif name in ("trigger", "trigger_first") and arg:
            edits.append(("trigger_first", arg))
        elif name == "dedupe" and not arg:
            edits.append(("dedupe",))
        elif name in ("sort", "sort_tags") and (not arg or arg.isdigit()):
            edits.append(("sort_tags", int(arg or 0)))
        else:
            raise TrainerError(
                f"Caption edit line {n} {raw.strip()!r} is not understood: use 'remove: a, b', 'add: a', "
                "'add_start: a', 'replace: old -> new', 'trigger: word', 'dedupe' or 'sort: 1'.")
    return edits


# ---------------------------------------------------------------------------------------------
# over a dataset


@dataclass
class EditedCaption:
    image: Path  # the image the caption belongs to
    old: str  # caption before the edits
    new: str  # caption after the edits
    caption_path: Path | None = None  # default: the image's name with the caption extension

    @property
    def changed(self) -> bool:
        return self.old != self.new


def _image_and_caption(entry) -> tuple[Path, str]:
    if isinstance(entry, EditedCaption):
        return entry.image, entry.new
    if isinstance(entry, (tuple, list)) and len(entry) == 2:
        return Path(getattr(entry[0], "path", entry[0])), str(entry[1])
    if hasattr(entry, "path") and hasattr(entry, "caption"):  # trainer.data.dataset.ImageItem
        return Path(entry.path), str(entry.caption)
    raise TrainerError(f"{entry!r} is not an image with a caption (an ImageItem or an (image, caption) pair).")


def _entries(dataset_or_items) -> list:
    root = getattr(dataset_or_items, "root", None)
    if root is not None and hasattr(dataset_or_items, "items"):
        listed = [name for name in CAPTION_LISTS if (Path(root) / name).is_file()]
        if listed:
            raise TrainerError(
                f"The captions of {root} come from {listed[0]}, not from .txt files: edit {listed[0]} "
                "or remove it so the same-name .txt captions are used.")
        return [item for item in dataset_or_items.items if not getattr(item, "is_reg", False)]
    return list(dataset_or_items)


def _matches(image: Path, only: str) -> bool:
    only = only.replace("\\", "/").strip("/")
    parts = image.parts
    if "/" in only:
        return "/".join(parts[-len(only.split("/")):]) == only
    return image.name == only or image.stem == only


def apply_edits(dataset_or_items, edits: Sequence, only: str | None = None) -> list[EditedCaption]:
    """Run ``edits`` (in order) over every training image's caption, or only the image named
    ``only`` (file name, stem, or "10_name/file.png" when two folders hold the same name).
    Returns one ``EditedCaption`` per image (``.changed`` says whether it differs); nothing is
    written. ``dataset_or_items``: a Dataset, ImageItems, EditedCaptions or (image, caption) pairs."""
    fns = [_resolve_edit(e) for e in edits]
    pairs = [_image_and_caption(e) for e in _entries(dataset_or_items)]
    if only:
        pairs = [p for p in pairs if _matches(p[0], only)]
        if not pairs:
            raise TrainerError(f"No image named {only!r} in the dataset: give its file name, e.g. 001.png.")
        if len(pairs) > 1:
            where = ", ".join(f"{p.parent.name}/{p.name}" for p, _ in pairs)
            raise TrainerError(f"{only!r} names {len(pairs)} images ({where}): give the folder too, e.g. {where.split(', ')[0]}.")
    out = []
    for image, caption in pairs:
        new = caption
        for fn in fns:
            new = fn(new)
        out.append(EditedCaption(image, caption, new))
    return out
