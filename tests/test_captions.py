"""trainer.data.captions: what each caption option does to the text, and the caption-list readers."""

import random

import pytest
from PIL import Image

from trainer.data.captions import process_caption, read_caption_list, read_metadata_csv, read_metadata_jsonl
from trainer.errors import TrainerError

CAPTION = "ltchar, 1girl, black hair, smile, outdoors, red dress, looking at viewer"
TAGS = [t.strip() for t in CAPTION.split(",")]


def _runs(n=200, seed=0, **kw):
    rng = random.Random(seed)
    return [process_caption(CAPTION, rng, **kw) for _ in range(n)]


def test_defaults_leave_the_caption_alone():
    assert process_caption(CAPTION + "\nsecond line", random.Random(0)) == CAPTION


def test_shuffle_changes_order_but_keeps_every_tag():
    outs = _runs(shuffle_caption=True)
    assert len(set(outs)) > 50
    assert all(sorted(o.split(", ")) == sorted(TAGS) for o in outs)
    assert outs == _runs(shuffle_caption=True)  # seeded rng -> same captions
    assert {o.split(", ")[0] for o in outs} == set(TAGS)  # any tag can lead


def test_keep_tokens_pins_the_first_tags():
    outs = _runs(shuffle_caption=True, keep_tokens=2)
    assert all(o.split(", ")[:2] == ["ltchar", "1girl"] for o in outs)
    assert len({o.split(", ")[2] for o in outs}) == len(TAGS) - 2


def test_keep_tokens_separator_splits_fixed_and_shuffled_parts():
    rng = random.Random(1)
    caption = "ltchar, masterpiece ||| smile, outdoors, red dress ||| best quality"
    outs = [process_caption(caption, rng, shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
            for _ in range(100)]
    for o in outs:
        parts = o.split(", ")
        assert parts[:2] == ["ltchar", "masterpiece"] and parts[-1] == "best quality"  # separator wins over keep_tokens
        assert sorted(parts[2:5]) == ["outdoors", "red dress", "smile"]
    assert len(set(outs)) == 6  # 3! orders of the middle part
    # the separator never reaches the text encoder, even with shuffling off
    assert process_caption("a, b ||| c, d", random.Random(0), keep_tokens_separator="|||") == "a, b, c, d"


def test_tag_dropout_drops_only_shuffled_tags_at_the_rate():
    outs = _runs(n=400, keep_tokens=1, caption_tag_dropout_rate=0.3)
    assert all(o.startswith("ltchar") for o in outs)
    kept = sum(len(o.split(", ")) - 1 for o in outs) / (400 * (len(TAGS) - 1))
    assert kept == pytest.approx(0.7, abs=0.05)
    # without shuffle the surviving tags keep their order
    for o in outs:
        idx = [TAGS.index(t) for t in o.split(", ")]
        assert idx == sorted(idx)


def test_caption_dropout_empties_whole_captions_at_the_rate():
    outs = _runs(n=1000, caption_dropout_rate=0.1, shuffle_caption=True)
    assert outs.count("") / 1000 == pytest.approx(0.1, abs=0.03)
    assert all(o == "" or len(o.split(", ")) == len(TAGS) for o in outs)
    assert set(_runs(n=20, caption_dropout_rate=1.0)) == {""}


def test_custom_separator_and_bad_rates():
    out = process_caption("a; b; c", random.Random(0), keep_tokens=1, caption_tag_dropout_rate=1.0, caption_separator=";")
    assert out == "a"
    with pytest.raises(TrainerError, match="between 0 and 1"):
        process_caption(CAPTION, random.Random(0), caption_dropout_rate=5)


# -- readers ----------------------------------------------------------------------------------------
@pytest.fixture()
def folder(tmp_path):
    for name in ("001.png", "002.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    return tmp_path


def test_metadata_csv_with_and_without_bom(folder):
    text = 'file_name,text\n001.png,"一只猫, 在草地上"\n002.jpg,a dog\n'
    for encoding in ("utf-8", "utf-8-sig"):
        (folder / "metadata.csv").write_text(text, encoding=encoding)
        rows = read_metadata_csv(folder / "metadata.csv")
        assert rows == [(folder / "001.png", "一只猫, 在草地上"), (folder / "002.jpg", "a dog")]
    assert read_caption_list(folder / "metadata.csv") == rows


def test_metadata_csv_errors_name_file_and_line(folder):
    csv_path = folder / "metadata.csv"
    csv_path.write_text("file_name,text\n001.png,ok\nmissing.png,nope\n", encoding="utf-8")
    with pytest.raises(TrainerError, match=r"metadata.csv line 3: image 'missing.png' not found"):
        read_metadata_csv(csv_path)
    csv_path.write_text("name,caption\n001.png,x\n", encoding="utf-8")
    with pytest.raises(TrainerError, match="file_name,text"):
        read_metadata_csv(csv_path)


def test_jsonl_reader(folder):
    path = folder / "metadata.jsonl"
    path.write_text('\ufeff{"file_name": "001.png", "text": "a cat"}\n\n{"image": "002.jpg", "caption": "a dog"}\n',
                    encoding="utf-8")
    assert read_metadata_jsonl(path) == [(folder / "001.png", "a cat"), (folder / "002.jpg", "a dog")]
    path.write_text('{"file_name": "001.png", "text": "a"}\n{"file_name": "002.jpg", text: 1}\n', encoding="utf-8")
    with pytest.raises(TrainerError, match=r"metadata.jsonl line 2: not valid JSON"):
        read_metadata_jsonl(path)
    path.write_text('{"file_name": "001.png"}\n{"file_name": "nope.png", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(TrainerError, match=r"line 2: image 'nope.png' not found"):
        read_metadata_jsonl(path)
    path.write_text('["001.png", "x"]\n', encoding="utf-8")
    with pytest.raises(TrainerError, match="line 1: expected an object"):
        read_metadata_jsonl(path)
