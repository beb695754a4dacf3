"""Free disk space is checked before training against what the run will write."""

import shutil
from pathlib import Path

import pytest

from full_disk import cli_on_full_drive, small_run
from trainer.config import TrainConfig
from trainer.config_files import config_from_toml
from trainer.errors import TrainerError
from trainer.train import disk_space, run_setup
from trainer.train.loop import Callbacks, save_outputs, train

HEAVY = dict(max_train_epochs=3, save_every_n_epochs=1, save_state=True, cache_latents=True, network_train_unet_only=True,
             cache_latents_to_disk=True, cache_text_encoder_outputs=True, cache_text_encoder_outputs_to_disk=True,
             sample_prompts=["ltdemo --s 1 --w 64 --h 64"], sample_every_n_epochs=1)


def config_for(tmp_path, model, **settings) -> TrainConfig:
    return config_from_toml(small_run(tmp_path, model, **settings))


def usage_of(files) -> int:
    return sum(p.stat().st_size for p in files if p.is_file())


def usage(folder) -> int:
    return usage_of(Path(folder).rglob("*"))


def need(needs, start: str) -> int:
    return next(n.size for n in needs if n.what.startswith(start))


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_estimate_covers_what_the_run_writes(family, tiny_models, tmp_path, monkeypatch):
    checked = {}
    real = disk_space.check_free_space

    def spy(folder, needs, *args, **kwargs):
        checked[Path(folder)] = needs
        checked[Path(folder), "pages"] = usage_of(Path(config.output_dir).rglob(".paged-*"))  # while they exist
        return real(folder, needs, *args, **kwargs)

    monkeypatch.setattr(run_setup, "check_free_space", spy)
    config = config_for(tmp_path, tiny_models(family), **HEAVY)
    save_outputs(train(config, callbacks=Callbacks(log=lambda line: None)), config)
    out = Path(config.output_dir)
    cache, saves = checked[out / "cache"], checked[out]
    latents = [p for p in (out / "cache").glob("*.safetensors") if not p.name.startswith("text_")]
    texts = list((out / "cache").glob("text_*"))
    lora = (out / "star.safetensors").stat().st_size
    states = usage_of([p for folder in out.glob("star*-state") for p in folder.rglob("*")])
    # each estimate is at least what was written, and of its size (from the network, not a guess)
    for estimate, written in ((need(cache, "latent cache"), usage_of(latents)),
                              (need(cache, "text-encoder cache"), usage_of(texts)),
                              (need(cache, "encoder weights paged"), checked[out, "pages"]),
                              (need(saves, "the LoRA"), lora),
                              (need(saves, "2 epoch saves"), 2 * lora),
                              (need(saves, "4 training state"), states)):  # -state, -000001-, -000002-state
        assert written <= estimate <= 1.5 * written, (estimate, written)
    assert usage(out) - usage(out / "cache") <= sum(n.size for n in saves)


def small_drive(monkeypatch, folder: Path, free: int) -> None:
    real = shutil.disk_usage

    def disk_usage(path):
        found = real(path)
        return found._replace(free=free) if Path(path).resolve().is_relative_to(folder.resolve()) else found

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)


def test_run_that_does_not_fit_stops_before_the_first_step(tiny_models, tmp_path, monkeypatch):
    config = config_for(tmp_path, tiny_models("sd15"), **HEAVY, cache_dir=str(tmp_path / "cache"))
    out = Path(config.output_dir)
    out.mkdir()
    free = disk_space.MARGIN_BYTES + 1000  # more than the margin, less than margin + the run
    small_drive(monkeypatch, out, free)
    calls = []
    callbacks = Callbacks(on_start=lambda *a: calls.append("start"), on_step=lambda *a: calls.append("step"),
                          log=lambda line: None)
    with pytest.raises(TrainerError) as err:
        train(config, callbacks=callbacks)
    message = str(err.value)
    assert message.startswith(f"Not enough disk space for this run in {out}: it needs about ")
    assert f"drive has {disk_space.size_text(free)} free" in message and "Nothing was trained yet" in message
    for item in ("the LoRA", "2 epoch saves", "training state", "sample images", "set output_dir",
                 "save_every_n_epochs", "turn off save_state"):
        assert item in message, item
    assert calls == [] and not list(out.iterdir())
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # caches on their own drive were written


def test_disk_cache_that_does_not_fit_stops_before_caching(tiny_models, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    config = config_for(tmp_path, tiny_models("sd15"), **HEAVY, cache_dir=str(cache))
    small_drive(monkeypatch, cache, disk_space.MARGIN_BYTES + 1000)
    with pytest.raises(TrainerError) as err:
        train(config, callbacks=Callbacks(log=lambda line: None))
    message = str(err.value)
    assert message.startswith(f"Not enough disk space for this run in {cache}")
    assert "latent cache of 2 images" in message and "text-encoder cache of 1 captions" in message
    assert "set cache_dir" in message and "turn off cache_latents_to_disk" in message
    assert not list(cache.iterdir())


def test_cli_exits_with_the_message_before_training(tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = small_run(tmp_path, tiny_models("sd15"), save_every_n_epochs=1)
    run = cli_on_full_drive(out, tmp_path, "train", "--config", config, free=disk_space.MARGIN_BYTES + 1000)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: Not enough disk space for this run in {out}")
    assert "step/s" not in run.stderr and not list(out.iterdir())  # no progress bar: no step was taken
