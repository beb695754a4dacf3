"""Caption Editor core: every edit, reading (BOM, undecodable), atomic writes with backups."""

import os

import numpy as np
import pytest

from conftest import paint
from trainer.data.caption_edit import (EditedCaption, add_tags, apply_edits, dedupe, parse_edits, remove_tags,
                                       replace_tag, sort_tags, trigger_first)
from trainer.data.caption_files import BACKUP_FOLDER, read_captions, write_captions
from trainer.data.dataset import load_dataset
from trainer.errors import TrainerError


# --- edits ----------------------------------------------------------------------------------


def test_remove_tags_matches_case_space_underscore_and_keeps_spelling():
    caption = "ltchar, Black_Hair, smile,  black   eyes , Red Dress"
    assert remove_tags(caption, "black hair, BLACK_EYES") == "ltchar, smile, Red Dress"
    assert remove_tags(caption, ["black hair", "smile"]) == "ltchar, black   eyes, Red Dress"
    assert remove_tags(caption, "not there") == "ltchar, Black_Hair, smile, black   eyes, Red Dress"
    assert remove_tags("a, b, a", "A") == "b"  # every occurrence


def test_add_tags_end_and_start_without_duplicates():
    assert add_tags("ltchar, smile", "red dress, Smile") == "ltchar, smile, red dress"
    assert add_tags("ltchar, smile", ["masterpiece", "best_quality"], position="start") == \
        "masterpiece, best_quality, ltchar, smile"
    assert add_tags("", "a, b") == "a, b"
    assert add_tags("x", "best quality, best_quality") == "x, best quality"
    with pytest.raises(TrainerError):
        add_tags("x", "y", position="middle")


def test_replace_tag_in_place_and_merges_duplicates():
    assert replace_tag("ltchar, 1girl, smile", "1GIRL", "woman") == "ltchar, woman, smile"
    assert replace_tag("woman, 1girl, smile", "1girl", "Woman") == "woman, smile"  # first stays
    assert replace_tag("a, b_c, d", "b c", "") == "a, d"
    assert replace_tag("a, b", "z", "y") == "a, b"


def test_trigger_first_moves_or_inserts():
    assert trigger_first("smile, LtChar, red dress", "ltchar") == "ltchar, smile, red dress"
    assert trigger_first("smile, red dress", "ltchar") == "ltchar, smile, red dress"
    assert trigger_first("ltchar, smile", "ltchar") == "ltchar, smile"
    assert trigger_first("", "lt_char") == "lt_char"
    with pytest.raises(TrainerError):
        trigger_first("a", "a, b")


def test_dedupe_and_sort():
    assert dedupe("Smile, red dress, smile, red_dress, b") == "Smile, red dress, b"
    assert sort_tags("ltchar, zebra, Apple, b_c, b a") == "Apple, b a, b_c, ltchar, zebra"
    assert sort_tags("ltchar, zebra, Apple, b_c", keep_first=1) == "ltchar, Apple, b_c, zebra"
    assert sort_tags("a, b", keep_first=5) == "a, b"


def test_empty_tags_dropped_and_extra_lines_kept():
    assert dedupe(" a,, b ,\t,a ") == "a, b"
    assert remove_tags("a, b, c\nsecond line, b", "b") == "a, c\nsecond line, b"


def test_parse_edits_runs_like_the_functions():
    edits = parse_edits("""
        remove: black hair, black eyes   # fixed features
        add: red dress
        add_start: masterpiece
        replace: 1girl -> woman
        trigger: ltchar
        dedupe
        sort: 1
    """)
    items = [("x.png", "1girl, black_hair, Black Eyes, smile, smile")]
    assert apply_edits(items, edits)[0].new == "ltchar, masterpiece, red dress, smile, woman"
    with pytest.raises(TrainerError, match="line 1"):
        parse_edits("frobnicate: a")


# --- over a dataset ---------------------------------------------------------------------------


def _dataset(tmp_path):
    root = tmp_path / "ds"
    for folder, name, caption in (("10_ltchar", "001", "1girl, black hair, smile"),
                                  ("10_ltchar", "002", "black_hair, ltchar, red dress"),
                                  ("5_other", "001", "Black Hair, sitting")):
        paint(root / folder / f"{name}.png")
        (root / folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    return root


def test_apply_edits_all_images_and_one_image_without_touching_disk(tmp_path):
    root = _dataset(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*.txt")}
    dataset = load_dataset(root)
    edits = [("remove_tags", "black hair"), ("trigger_first", "ltchar")]
    out = apply_edits(dataset, edits)
    assert [e.new for e in out] == ["ltchar, 1girl, smile", "ltchar, red dress", "ltchar, sitting"]
    assert all(e.changed for e in out)
    one = apply_edits(dataset, [{"op": "add_tags", "tags": "smile"}], only="002.png")
    assert len(one) == 1 and one[0].image.name == "002.png" and one[0].new == "black_hair, ltchar, red dress, smile"
    with pytest.raises(TrainerError, match="2 images"):
        apply_edits(dataset, edits, only="001.png")  # in two folders
    assert apply_edits(dataset, edits, only="5_other/001.png")[0].new == "ltchar, sitting"
    with pytest.raises(TrainerError, match="No image"):
        apply_edits(dataset, edits, only="nope.png")
    with pytest.raises(TrainerError, match="Unknown caption edit"):
        apply_edits(dataset, [("explode",)])
    assert {p: p.read_bytes() for p in root.rglob("*.txt")} == before
    assert not list(root.rglob(BACKUP_FOLDER))


# --- reading ---------------------------------------------------------------------------------


def test_read_captions_bom_other_encodings_missing_and_reports_every_undecodable(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        paint(root / "3_x" / f"{name}.png")
    (root / "3_x" / "a.txt").write_bytes("\ufeffniña, smile\n".encode("utf-8"))  # BOM
    (root / "3_x" / "b.txt").write_bytes("plain".encode("utf-8"))
    (root / "3_x" / "c.txt").write_bytes("ni\xf1a".encode("cp1252"))  # Western Windows "ANSI"
    (root / "3_x" / "d.txt").write_bytes("hi".encode("utf-16"))  # Notepad's "Unicode" (UTF-16 with BOM)
    rng = np.random.default_rng(1)
    (root / "3_x" / "f.txt").write_bytes(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())  # not text
    (root / "3_x" / "g.txt").write_bytes(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    result = read_captions(root)
    cap = {p.name: c for p, c in result.captions.items()}
    assert cap["a.png"] == "niña, smile" and cap["b.png"] == "plain"
    assert cap["c.png"] == "niña" and cap["d.png"] == "hi"
    assert {p.name: e for p, e in result.encodings.items()} == {"c.txt": "cp1252", "d.txt": "utf_16"}
    assert [p.name for p in result.missing] == ["e.png"]
    assert [p.name for p, _ in result.problems] == ["f.txt", "g.txt"]
    assert all(reason.startswith("not text (no text encoding fits its bytes") for _, reason in result.problems)
    assert cap["f.png"] == "" and cap["g.png"] == ""


# --- writing ---------------------------------------------------------------------------------


def test_write_captions_atomic_utf8_with_backup_of_old_bytes(tmp_path):
    root = _dataset(tmp_path)
    folder = root / "10_ltchar"
    (folder / "002.txt").write_bytes(b"\xef\xbb\xbfblack_hair, ltchar, red dress")  # BOM: backed up as is
    old1, old2 = (folder / "001.txt").read_bytes(), (folder / "002.txt").read_bytes()
    paint(folder / "003.png")  # no caption yet: written, nothing to back up
    dataset = load_dataset(root, trigger_word="ltchar")
    edits = apply_edits(dataset, [("remove_tags", "black hair"), ("trigger_first", "ltchar"), ("add_tags", "niña")])
    result = write_captions(edits)
    assert (folder / "001.txt").read_bytes() == "ltchar, 1girl, smile, niña".encode("utf-8")
    assert (folder / "002.txt").read_bytes() == "ltchar, red dress, niña".encode("utf-8")  # no BOM
    assert (folder / "003.txt").read_text(encoding="utf-8") == "ltchar, niña"
    assert len(result.backups) == 3 and len(result.written) == 4  # 003.txt had nothing to back up
    backups = sorted(b for b in result.backups if b.parent.parent == folder / BACKUP_FOLDER)
    assert [b.name for b in backups] == ["001.txt", "002.txt"]
    assert backups[0].read_bytes() == old1 and backups[1].read_bytes() == old2
    other = [b for b in result.backups if b.parent.parent == root / "5_other" / BACKUP_FOLDER]
    assert [b.read_text(encoding="utf-8") for b in other] == ["Black Hair, sitting"]
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]  # no temp files left over
    # the backup folder is invisible to the loader, and re-writing the same text is a no-op
    again = load_dataset(root)
    assert again.notes == [] and len(again.items) == 4
    second = write_captions(apply_edits(again, [("dedupe",)]))
    assert second.written == [] and len(second.unchanged) == 4 and second.backups == []
    # a second real edit keeps the first backups and adds a new timestamped folder
    write_captions(apply_edits(load_dataset(root), [("add_tags", "x")]))
    assert len(list((folder / BACKUP_FOLDER).iterdir())) == 2
    assert not list(tmp_path.glob("*.txt")) and not list(root.glob("*.txt"))


def test_write_captions_without_backup(tmp_path):
    img = paint(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("old", encoding="utf-8")
    result = write_captions([(img, "new")], backup=False)
    assert result.backups == [] and (tmp_path / "a.txt").read_text(encoding="utf-8") == "new"
    assert not (tmp_path / BACKUP_FOLDER).exists()


def test_write_refuses_paths_outside_the_image_folder(tmp_path):
    folder = tmp_path / "ds" / "10_x"
    img = paint(folder / "a.png")
    (tmp_path / "victim.txt").write_text("keep", encoding="utf-8")
    bad = EditedCaption(img, "", "pwned", caption_path=folder / ".." / ".." / "victim.txt")
    with pytest.raises(TrainerError, match=r"\.\."):
        write_captions([bad])
    with pytest.raises(TrainerError, match="not in the image's folder"):
        write_captions([EditedCaption(img, "", "pwned", caption_path=tmp_path / "victim.txt")])
    with pytest.raises(TrainerError, match=r"\.\."):
        write_captions([(folder / ".." / "10_x" / "a.png", "pwned")])
    with pytest.raises(TrainerError, match="not a caption extension"):
        write_captions([(img, "pwned")], caption_extension=".png")
    with pytest.raises(TrainerError, match="overwrite an image"):
        write_captions([EditedCaption(img, "", "pwned", caption_path=folder / "a.png")])
    if hasattr(os, "symlink"):
        (folder / "a.txt").symlink_to(tmp_path / "victim.txt")
        with pytest.raises(TrainerError, match="not in the image's folder"):
            write_captions([(img, "pwned")])
    # nothing at all was written, not even the valid entries before a bad one
    good = paint(folder / "b.png")
    with pytest.raises(TrainerError):
        write_captions([(good, "fine"), bad])
    assert not (folder / "b.txt").exists()
    assert (tmp_path / "victim.txt").read_text(encoding="utf-8") == "keep"
