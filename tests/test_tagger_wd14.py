"""WD14 tagging with a stand-in ONNX model built here: its scores read back what the
pre-processing produced, so BGR order, white square padding and the input size are checked."""

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data.tagger_wd14 import WD14Tagger, preprocess
from trainer.errors import TrainerError

TAGS = [("0", "blue_sky", 0), ("1", "red_theme", 0), ("2", "white_border", 0), ("3", "general", 9),
        ("4", "hatsune_miku", 4), ("5", "^_^", 0), ("6", "solo", 0)]


class StandIn(torch.nn.Module):
    """Scores: mean of channel 0 (blue if BGR) and channel 2 (red), share of pure-white pixels,
    and constants for a rating, a character, a kaomoji and a low general tag."""

    def forward(self, x):  # [N, 448, 448, 3]
        blue, red = x[..., 0].mean(dim=(1, 2)) / 255, x[..., 2].mean(dim=(1, 2)) / 255
        white = (x.min(dim=3).values > 254.5).float().mean(dim=(1, 2))
        ones = torch.ones_like(blue)
        return torch.stack([blue, red, white, 0.9 * ones, 0.95 * ones, 0.7 * ones, 0.2 * ones], dim=1)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wd14")
    torch.onnx.export(StandIn(), torch.zeros(1, 448, 448, 3), str(folder / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "n"}})
    rows = ["tag_id,name,category,count"] + [f"{i},{n},{c},100" for i, n, c in TAGS]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return WD14Tagger(folder)


def test_preprocessing_is_bgr_white_padded_square_at_448(tagger):
    blue_wide = Image.new("RGB", (200, 100), (0, 0, 255))
    arr = preprocess(blue_wide, 448)
    assert arr.shape == (448, 448, 3) and arr.dtype == np.float32
    assert tuple(arr[224, 224]) == (255.0, 0.0, 0.0)  # BGR: blue first
    assert tuple(arr[5, 224]) == (255.0, 255.0, 255.0)  # padded with white above and below
    result = tagger.tag([blue_wide], general_threshold=0.4)[0]
    scores = dict(result.tags)
    assert scores["blue sky"] == pytest.approx(1.0, abs=0.01)  # blue read from channel 0
    assert scores["white border"] == pytest.approx(0.5, abs=0.02)  # half the square is padding
    assert scores["red theme"] == pytest.approx(0.5, abs=0.02)  # red only in the white padding


def test_thresholds_categories_order_and_exclude(tagger):
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    result = tagger.tag([red], general_threshold=0.6, character_threshold=0.85)[0]
    assert [t for t, _ in result.tags] == ["red theme", "hatsune miku", "^_^"]  # by confidence
    assert result.rating == {"general": pytest.approx(0.9)}  # ratings kept apart, never in the caption
    assert "general" not in result.caption()
    assert tagger.tag([red], character_threshold=0.99)[0].caption() == "red theme, ^_^"
    assert "solo" in tagger.tag([red], general_threshold=0.1)[0].caption()
    assert tagger.tag([red], exclude=["Red_Theme"])[0].caption() == "hatsune miku, ^_^"


def test_batches_match_single_images(tagger):
    images = [Image.new("RGB", (50 + 10 * i, 60), (20 * i, 100, 200)) for i in range(5)]
    one_by_one = [tagger.tag([img])[0].tags for img in images]
    assert [r.tags for r in tagger.tag(images, batch_size=2)] == one_by_one


def test_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(TrainerError, match=r"model.onnx and selected_tags.csv .*wd-v1-4-moat-tagger-v2"):
        WD14Tagger(tmp_path)


def test_deepdanbooru_onnx_export_tags_rgb_and_skips_ratings(tmp_path):
    from trainer.data.tagger_deepdanbooru import DeepDanbooruTagger

    class DDStandIn(torch.nn.Module):
        def forward(self, x):  # [N, 512, 512, 3] RGB 0..1
            red = x[..., 0].mean(dim=(1, 2))
            ones = torch.ones_like(red)
            return torch.stack([red * 4, 0.9 * ones, 0.7 * ones, 0.1 * ones], dim=1)

    torch.onnx.export(DDStandIn(), torch.zeros(1, 512, 512, 3), str(tmp_path / "model.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "n"}})
    (tmp_path / "tags.txt").write_text("red_theme\nrating:safe\n1girl\nsolo\n", encoding="utf-8")
    tagger = DeepDanbooruTagger(tmp_path)
    result = tagger.tag([Image.new("RGB", (100, 50), (255, 0, 0))], threshold=0.6)[0]
    # red fills half the padded (black) square: red score = 0.5 * 4 = 2.0 -> first; rating dropped
    assert [t for t, _ in result.tags] == ["red theme", "1girl"]
    with pytest.raises(TrainerError, match="DeepDanbooru files missing"):
        DeepDanbooruTagger(tmp_path / "none")
