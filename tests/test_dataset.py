"""Dataset v1: kohya folders, captions, fitting to the training size, bad input."""

import dataclasses
import random

import numpy as np
import pytest
from PIL import Image

from conftest import paint
from trainer.data.dataset import load_dataset
from trainer.data.augment import Augment, fit_image
from trainer.data.images import fit_center, open_rgb
from trainer.errors import TrainerError
from trainer.train.loop import TrainConfig, total_steps


def test_kohya_folders_give_repeats_class_token_and_captions(tmp_path):
    paint(tmp_path / "10_ltchar" / "a.png")
    paint(tmp_path / "10_ltchar" / "b.png")
    (tmp_path / "10_ltchar" / "a.txt").write_text("ltchar, red dress", encoding="utf-8")
    paint(tmp_path / "3_style_x" / "c.png")
    paint(tmp_path / "root.png")
    data = load_dataset(tmp_path, repeats=2, trigger_word="mytrigger")
    by_name = {item.path.name: item for item in data.items}
    assert by_name["a.png"].caption == "ltchar, red dress" and by_name["a.png"].repeats == 10
    assert by_name["b.png"].caption == "ltchar"  # no caption file -> class token
    assert by_name["c.png"].caption == "style x" and by_name["c.png"].repeats == 3
    assert by_name["root.png"].caption == "mytrigger" and by_name["root.png"].repeats == 2
    assert data.num_samples == 10 + 10 + 3 + 2
    assert data.tag_frequency()["10_ltchar"] == {"ltchar": 2, "red dress": 1}


def test_total_steps_is_images_times_repeats_times_epochs_over_batch(tmp_path):
    for i in range(5):
        paint(tmp_path / "4_x" / f"{i}.png")
    data = load_dataset(tmp_path)
    # 5 images x 4 repeats = 20 per epoch; batch 3 -> 7 steps per epoch (last batch partial)
    assert total_steps(TrainConfig(train_batch_size=3, max_train_epochs=6), data) == 7 * 6
    assert total_steps(TrainConfig(train_batch_size=2, max_train_epochs=10), data) == 100


def test_caption_with_bom_and_non_image_files(tmp_path):
    paint(tmp_path / "1_a" / "x.png")
    (tmp_path / "1_a" / "x.txt").write_bytes("\ufeffsmile, 猫".encode("utf-8"))
    (tmp_path / "1_a" / "notes.pdf").write_bytes(b"%PDF")
    (tmp_path / "misc").mkdir()
    data = load_dataset(tmp_path)
    assert data.items[0].caption == "smile, 猫"
    assert any("notes.pdf" in n for n in data.notes)
    assert any("misc" in n and "10_misc" in n for n in data.notes)


def test_empty_folder_says_what_to_add(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(TrainerError, match=r"No training images in .*1 other files/folders skipped.*10_mychar"):
        load_dataset(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(TrainerError, match="Dataset folder not found"):
        load_dataset(tmp_path / "nope")


def test_truncated_image_is_named_before_training(tmp_path):
    good = paint(tmp_path / "1_a" / "good.png", size=(128, 128))
    data = good.read_bytes()
    (tmp_path / "1_a" / "broken.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainerError, match=r"1_a/broken\.png: truncated PNG file"):
        load_dataset(tmp_path)


def test_garbage_with_image_extension(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(TrainerError, match=r"fake\.jpg"):
        load_dataset(tmp_path)


def test_undecodable_caption_is_named(tmp_path):
    paint(tmp_path / "x.png")
    (tmp_path / "x.txt").write_bytes(np.random.default_rng(3).integers(0, 256, 96, dtype=np.uint8).tobytes())
    with pytest.raises(TrainerError, match=r"x\.txt: not text \(no text encoding fits its bytes"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("size,target", [((300, 200), (512, 512)), ((200, 300), (512, 768)),
                                         ((1000, 400), (768, 512)), ((64, 64), (64, 64))])
def test_fit_center_resizes_to_cover_and_crops_the_middle(size, target):
    img = Image.new("RGB", size)
    out, (top, left) = fit_center(img, *target)
    assert out.size == target
    scale = max(target[0] / size[0], target[1] / size[1])
    assert left == (round(size[0] * scale) - target[0]) // 2 and top == (round(size[1] * scale) - target[1]) // 2


def test_fitted_image_keeps_original_size_and_crop_for_time_ids(tmp_path):
    path = paint(tmp_path / "wide.png", size=(200, 100), colour=(0, 0, 0), box=(90, 0, 110, 100),
                 box_colour=(255, 255, 255))
    fitted, _ = fit_image(path, 64, 64, Augment(), random.Random(0))
    assert fitted.original_size == (100, 200) and fitted.crop_top_left == (0, 32)
    assert fitted.pixels.shape == (3, 64, 64) and fitted.pixels.min() >= -1 and fitted.pixels.max() <= 1
    # the white bar in the middle of the wide image stays in the middle of the crop
    assert fitted.pixels[:, :, 30:34].mean() > 0.9 and fitted.pixels[:, :, :8].mean() < -0.9


def test_rgba_and_palette_are_flattened_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert open_rgb(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (8, 8))
    pal.putpalette([0, 255, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert open_rgb(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotated_photo_is_upright_and_16bit_and_cmyk_convert(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "d.png")
    assert open_rgb(tmp_path / "d.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert open_rgb(tmp_path / "c.jpg").mode == "RGB"


def test_enormous_image_refused_before_decoding(tmp_path, monkeypatch):
    import trainer.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    paint(tmp_path / "big.png", size=(20, 20))
    with pytest.raises(TrainerError, match=r"big\.png: too large \(20x20 is over"):
        open_rgb(tmp_path / "big.png")


def test_diffsynth_metadata_csv_and_jsonl_datasets(tmp_path):
    paint(tmp_path / "a.png")
    paint(tmp_path / "b.png")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,一只猫\nb.png,a dog\n", encoding="utf-8-sig")
    data = load_dataset(tmp_path, repeats=3)
    assert [(i.path.name, i.caption, i.repeats) for i in data.items] == [("a.png", "一只猫", 3), ("b.png", "a dog", 3)]
    (tmp_path / "metadata.csv").unlink()
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "b.png", "text": "b"}\n{"file_name": "zz.png", "text": "x"}\n')
    with pytest.raises(TrainerError, match="zz.png"):
        load_dataset(tmp_path)


def _broken_files(folder, good):
    """One file of each kind of damage next to ``good`` (a painted PNG); {name: expected reason}."""
    import io

    png = good.read_bytes()
    (folder / "half.png").write_bytes(png[: len(png) // 2])
    jpeg = io.BytesIO()
    Image.open(good).convert("RGB").save(jpeg, "JPEG")
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    (folder / "notes.webp").write_bytes(b"just some text with an image extension")
    paint(folder / "huge.png", size=(120, 120))
    return {"half.png": "truncated PNG file", "cut.jpg": "truncated JPEG file", "empty.png": "empty file (0 bytes)",
            "page.jpg": "not an image: HTML/XML text", "notes.webp": "not an image",
            "huge.png": "too large (120x120 is over"}


def test_every_unreadable_image_and_caption_is_named_in_one_error(tmp_path, monkeypatch):
    import trainer.data.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)  # huge.png is 120x120
    good = paint(tmp_path / "5_a" / "good.png", size=(96, 96))
    expected = _broken_files(tmp_path / "5_a", good)
    paint(tmp_path / "root_ok.png")
    (tmp_path / "root_ok.txt").write_bytes(np.random.default_rng(0).integers(0, 256, 80, dtype=np.uint8).tobytes())
    with pytest.raises(TrainerError) as err:
        load_dataset(tmp_path)
    message = str(err.value)
    assert message.startswith(f"7 files in {tmp_path} cannot be used: ")
    for name, reason in expected.items():
        assert f"5_a/{name}: {reason}" in message, (name, message)
    assert "root_ok.txt: not text (no text encoding fits its bytes" in message
    assert "good.png" not in message and "root_ok.png" not in message


def test_non_utf8_captions_are_read_and_their_encoding_noted(tmp_path):
    captions = {"cn.txt": ("一只可爱的小猫, 高清", "gb18030"), "fr.txt": ("1girl, niña, café, smile", "cp1252"),
                "u16.txt": ("ltchar, 猫", "utf-16"), "bom.txt": ("smile, 猫", "utf-8-sig"), "plain.txt": ("ltchar", "utf-8")}
    for name, (text, encoding) in captions.items():
        paint(tmp_path / "2_x" / name.replace(".txt", ".png"))
        (tmp_path / "2_x" / name).write_bytes(text.encode(encoding))
    data = load_dataset(tmp_path)
    assert {item.path.stem + ".txt": item.caption for item in data.items} == {n: t for n, (t, _) in captions.items()}
    encoding_notes = sorted(n for n in data.notes if "is not UTF-8" in n)
    assert [n.split(" (")[0] for n in encoding_notes] == [
        "caption 2_x/cn.txt is not UTF-8: read as gb18030", "caption 2_x/fr.txt is not UTF-8: read as cp1252",
        "caption 2_x/u16.txt is not UTF-8: read as utf_16"]


def test_the_run_logs_the_encoding_and_a_cache_names_every_image_that_broke(tiny_models, tmp_path):
    from trainer.train.loop import Callbacks, train

    folder = tmp_path / "data" / "3_ltx"
    for i in range(4):
        paint(folder / f"{i}.png", colour=(40 * i, 90, 200))
    (folder / "0.txt").write_bytes("一只可爱的小猫, 高清".encode("gb18030"))
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(tmp_path / "data"),
                         resolution="64", network_dim=4, train_batch_size=1, max_train_steps=1,
                         output_dir=str(tmp_path / "out"), output_name="enc")
    logs = []
    train(config, callbacks=Callbacks(log=logs.append))
    assert any(line.startswith("note: caption 3_ltx/0.txt is not UTF-8: read as gb18030") for line in logs), logs

    dataset = load_dataset(tmp_path / "data")  # checked fine, then files break before caching
    (folder / "1.png").write_bytes(b"")
    (folder / "2.png").write_bytes((folder / "0.png").read_bytes()[:60])
    for to_disk in (False, True):  # the disk cache reads each file's bytes (its key) before decoding
        with pytest.raises(TrainerError) as err:
            train(dataclasses.replace(config, cache_latents=True, cache_latents_to_disk=to_disk), dataset=dataset)
        message = str(err.value)
        assert message.startswith("2 files in ") and "3_ltx/1.png: empty file (0 bytes)" in message
        assert "3_ltx/2.png: truncated PNG file" in message
    (folder / "3.png").unlink()
    with pytest.raises(TrainerError) as err:
        train(dataclasses.replace(config, cache_latents=True), dataset=dataset)
    assert str(err.value).startswith("3 files in ")
    assert "3_ltx/3.png: cannot be opened (No such file or directory)" in str(err.value)
