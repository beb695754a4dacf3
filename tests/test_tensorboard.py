"""kohya's log_with / logging_dir / log_prefix: TensorBoard event files with kohya's scalar names,
read back here; without the tensorboard package one note and the run goes on."""

import re
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import paint
from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.train.loop import Callbacks, train
from trainer.train.tracker import wants_tensorboard


@pytest.fixture
def two_images(tmp_path):
    """2 images, 1 repeat: with batch 1, two steps an epoch."""
    folder = tmp_path / "data" / "1_ltdemo"
    for i in range(2):
        paint(folder / f"{i}.png", colour=(200, 40 * i, 0))
        (folder / f"{i}.txt").write_text("ltdemo, a square")
    return folder.parent


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=2, network_alpha=2, learning_rate=1e-3, train_batch_size=1, max_train_epochs=2,
                output_dir=str(out), output_name="tb")
    return TrainConfig(**{**base, **values})


def scalars(folder) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_event_files_hold_kohyas_scalars(tiny_models, two_images, tmp_path):
    logs = tmp_path / "logs"
    config = config_for(tiny_models("sd15"), two_images, tmp_path / "out", log_with="tensorboard",
                        logging_dir=str(logs), log_prefix="run_", text_encoder_lr=5e-4, lr_scheduler="linear")
    result = train(config, callbacks=Callbacks(log=lambda line: None))
    (run,) = logs.iterdir()  # kohya's folder: <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/network_train
    assert re.fullmatch(r"run_\d{14}", run.name) and [p.name for p in run.iterdir()] == ["network_train"]
    found = scalars(run / "network_train")
    assert {"loss/current", "loss/average", "lr/unet", "lr/textencoder", "loss/epoch_average"} <= set(found)
    losses = result.losses  # 2 epochs of 2 steps
    assert found["loss/current"] == pytest.approx(dict(enumerate(losses, 1)), rel=1e-6)
    # kohya's LossRecorder: the mean over the last epoch's steps, this epoch's replacing last epoch's
    windows = {1: losses[:1], 2: losses[:2], 3: [losses[2], losses[1]], 4: losses[2:]}
    assert found["loss/average"] == pytest.approx({s: sum(w) / len(w) for s, w in windows.items()}, rel=1e-6)
    assert found["loss/epoch_average"] == pytest.approx({1: sum(losses[:2]) / 2, 2: sum(losses[2:]) / 2}, rel=1e-6)
    # the lr after each step's scheduler step, as kohya logs it: the next step's lr; linear ends at 0
    unet = {step: result.learning_rates[step] for step in (1, 2, 3)} | {4: 0.0}
    assert found["lr/unet"] == pytest.approx(unet, rel=1e-6)
    assert found["lr/textencoder"] == pytest.approx({s: lr / 2 for s, lr in unet.items()}, rel=1e-6)


def test_without_tensorboard_a_note_and_the_run_goes_on(tiny_models, two_images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    logs = []
    config = config_for(tiny_models("sd15"), two_images, tmp_path / "out", log_with="all",
                        logging_dir=str(tmp_path / "logs"), max_train_steps=1, network_train_unet_only=True)
    result = train(config, callbacks=Callbacks(log=logs.append))
    assert result.steps == 1 and not (tmp_path / "logs").exists()
    notes = [line for line in logs if line.startswith("note:")]
    assert any("pip install tensorboard" in line for line in notes)
    assert any("wandb part of log_with = \"all\" is not supported here" in line for line in notes)


def test_kohyas_log_with_rules(tmp_path):
    nowhere = dict(pretrained_model_name_or_path=str(tmp_path / "no_model"), train_data_dir=str(tmp_path))
    with pytest.raises(TrainerError, match='log_with = "tensorboard" needs logging_dir'):
        train(TrainConfig(**nowhere, log_with="tensorboard"))
    with pytest.raises(TrainerError, match="log_with 'mlflow' is not one of tensorboard, wandb, all"):
        train(TrainConfig(**nowhere, log_with="mlflow"))
    assert wants_tensorboard(TrainConfig(logging_dir="logs"))  # kohya: a logging_dir alone means tensorboard
    assert not wants_tensorboard(TrainConfig(log_with="wandb", logging_dir="logs"))
