"""The metadata people share LoRAs by, as kohya writes it: metadata_title/_author/_description/
_license/_tags/_trigger_phrase/_usage_hint/_thumbnail into modelspec.*, training_comment into
ss_training_comment, the last sample image as the default thumbnail, and no_metadata keeping
only kohya's minimum (plus modelspec, as kohya)."""

import base64
import io

import numpy as np
from PIL import Image

from conftest import paint
from trainer.config import TrainConfig
from trainer.lora.kohya_format import SS_MINIMUM_KEYS
from trainer.lora.metadata import read_metadata
from trainer.lora.modelspec import sample_data_url, thumbnail_data_url
from trainer.train.loop import Callbacks, save_outputs, train

SHARED = dict(metadata_title="Star Maker", metadata_author="ltdemo author", metadata_description="Paints stars.",
              metadata_license="CreativeML Open RAIL-M", metadata_tags="star, test",
              metadata_trigger_phrase="ltdemo star", metadata_usage_hint="weight 0.8",
              training_comment="trained on four painted stars")


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=2, network_alpha=2, train_batch_size=4, max_train_steps=1, network_train_unet_only=True,
                output_dir=str(out), output_name="meta")
    return TrainConfig(**{**base, **values})


def decoded(data_url: str) -> tuple[str, bytes]:
    head, _, payload = data_url.partition(",")
    return head, base64.b64decode(payload)


def test_shared_metadata_and_the_last_sample_as_thumbnail(tiny_models, star_dataset, tmp_path, pack, monkeypatch):
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path / "run", **SHARED,
                        sample_prompts=["ltdemo --s 1 --w 64 --h 64 --d 1", "ltdemo star --s 1 --w 64 --h 64 --d 2"],
                        sample_every_n_steps=1)
    result = train(config, callbacks=Callbacks(log=lambda line: None))
    meta = read_metadata(save_outputs(result, config)["lora"])
    assert {key: meta[f"modelspec.{key}"] for key in ("title", "author", "description", "license", "tags",
                                                      "trigger_phrase", "usage_hint")} == \
        {"title": "Star Maker", "author": "ltdemo author", "description": "Paints stars.",
         "license": "CreativeML Open RAIL-M", "tags": "star, test", "trigger_phrase": "ltdemo star",
         "usage_hint": "weight 0.8"}
    assert meta["ss_training_comment"] == "trained on four painted stars"
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["ss_output_name"] == "meta" and "lt_config" in meta and meta["ss_save_precision"] == "fp16"
    # the thumbnail is the run's last sample image (the second prompt's), as a JPEG data URL
    head, jpeg = decoded(meta["modelspec.thumbnail"])
    assert head == "data:image/jpeg;base64"
    last_sample = result.files["sample_01_s000001"]
    thumb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32)
    sample = np.asarray(Image.open(last_sample).convert("RGB"), np.float32)
    assert thumb.shape == sample.shape == (64, 64, 3)
    # JPEG's loss only: the thumbnail is the sample as that JPEG (a tiny model's samples are noise-like,
    # so the loss itself is large and varies with the picture)
    from trainer.lora.modelspec import THUMBNAIL_QUALITY

    buffer = io.BytesIO()
    Image.open(last_sample).convert("RGB").save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    again = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float32)
    assert np.abs(thumb - again).mean() < 0.5

    # the LoRA Save node writes the same metadata
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    monkeypatch.setenv("LT_MODELS_DIR", str(models))
    saved = pack.nodes.lora.LoraSave().save(result.lora, "shared", "fp16", False)["result"][0]
    assert read_metadata(saved) == meta


def test_no_metadata_keeps_kohyas_minimum_and_a_thumbnail_file(tiny_models, star_dataset, tmp_path):
    thumbnail = paint(tmp_path / "cover.png", size=(40, 30))
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path / "run", **SHARED, no_metadata=True,
                        metadata_thumbnail=str(thumbnail))
    result = train(config, callbacks=Callbacks(log=lambda line: None))
    meta = read_metadata(save_outputs(result, config)["lora"])
    # kohya's minimum ss_* keys (what loading the network needs) and its modelspec: nothing else
    # (ss_network_args only when network_args are given, as kohya)
    assert {k for k in meta if not k.startswith("modelspec.")} == set(SS_MINIMUM_KEYS) - {"ss_network_args"}
    assert meta["ss_network_dim"] == "2" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["modelspec.title"] == "Star Maker" and meta["modelspec.author"] == "ltdemo author"
    # a thumbnail file goes in as kohya puts it: its bytes as a data URL of its type
    head, data = decoded(meta["modelspec.thumbnail"])
    assert head == "data:image/png;base64" and data == thumbnail.read_bytes()


def test_thumbnail_sources(tmp_path):
    big = paint(tmp_path / "big.png", size=(600, 400))
    head, jpeg = decoded(sample_data_url(big))
    assert head == "data:image/jpeg;base64" and Image.open(io.BytesIO(jpeg)).size == (256, 171)
    assert sample_data_url(tmp_path / "gone.png") is None
    url = "data:image/webp;base64,AAAA"
    assert thumbnail_data_url(url) == url
    assert thumbnail_data_url(str(tmp_path / "gone.png")) is None


def test_a_missing_thumbnail_file_is_a_note_and_the_run_goes_on(tiny_models, star_dataset, tmp_path):
    logs = []
    config = config_for(tiny_models("sd15"), star_dataset, tmp_path / "run", metadata_thumbnail=str(tmp_path / "x.png"))
    result = train(config, callbacks=Callbacks(log=logs.append))
    assert f"note: metadata_thumbnail file not found: {tmp_path / 'x.png'}; the LoRA is saved without a thumbnail" \
        in logs
    assert "modelspec.thumbnail" not in result.lora.metadata and result.steps == 1
