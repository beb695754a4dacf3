"""kohya's step saves and states: save_every_n_steps, save_last_n_steps(_state), save_state's
numbered epoch states with save_last_n_epochs_state, save_state_on_train_end; kohya's file names
and its removal of old ones."""

import json

from conftest import paint
from safetensors import safe_open
from safetensors.torch import load_file

from trainer.config import TrainConfig
from trainer.train import run_setup
from trainer.train.loop import Callbacks, train


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=2, network_alpha=2, learning_rate=1e-3, train_batch_size=4, max_train_epochs=1,
                network_train_unet_only=True, output_dir=str(out), output_name="opt")
    return TrainConfig(**{**base, **values})


def progress(folder) -> dict:
    return json.loads((folder / "progress.json").read_text(encoding="utf-8"))


def test_step_saves_and_states_keep_the_last_n_steps_and_resume_exactly(tiny_models, star_dataset, tmp_path,
                                                                        monkeypatch):
    estimated = {}
    real_check = run_setup.check_free_space

    def spy(folder, needs, *args, **kwargs):
        estimated.update({need.what: need.size for need in needs})
        return real_check(folder, needs, *args, **kwargs)

    monkeypatch.setattr(run_setup, "check_free_space", spy)
    out, logs = tmp_path / "run", []
    # 10 steps an epoch (4 images x 10 repeats / batch 4): the run ends mid-epoch, at step 6
    values = dict(max_train_steps=6, save_every_n_steps=2, save_last_n_steps=3, save_state=True,
                  save_last_n_steps_state=4)
    result = train(config_for(tiny_models("sd15"), star_dataset, out, **values), callbacks=Callbacks(log=logs.append))
    # kohya: at step s the save of step (s - keep - 1) rounded down to a multiple of every goes
    assert sorted(p.name for p in out.glob("opt-step*.safetensors")) == \
        ["opt-step00000004.safetensors", "opt-step00000006.safetensors"]
    assert sorted(p.name for p in out.glob("opt-step*-state")) == \
        ["opt-step00000002-state", "opt-step00000004-state", "opt-step00000006-state"]
    assert any("removed old save opt-step00000002.safetensors (save_last_n_steps=3)" in line for line in logs)
    with safe_open(str(out / "opt-step00000004.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "4" and set(f.keys()) == set(result.lora.tensors)
    assert result.files["step_6"] == out / "opt-step00000006.safetensors"
    step4 = progress(out / "opt-step00000004-state")
    assert (step4["step"], step4["epoch"], step4["position"]) == (4, 0, 4)
    end = progress(out / "opt-state")  # kohya's state at the end of training, mid-epoch here
    assert (end["step"], end["position"]) == (6, 6)
    # the free-space check counted the step saves (3: the new one is written before the oldest goes)
    step_saves = next(size for what, size in estimated.items() if what.startswith("3 step saves"))
    assert step_saves >= 2 * (out / "opt-step00000004.safetensors").stat().st_size

    # a step state resumes exactly: from step 4 to 6 ends where the whole run ended
    resumed = train(config_for(tiny_models("sd15"), star_dataset, tmp_path / "resumed", max_train_steps=6,
                               resume=str(out / "opt-step00000004-state")), callbacks=Callbacks(log=lambda line: None))
    assert resumed.steps == 6
    for key, tensor in result.lora.tensors.items():
        assert (resumed.lora.tensors[key] - tensor).abs().max() <= 1e-6, key


def test_epoch_states_keep_the_last_n_and_train_end_state(tiny_models, star_dataset, tmp_path):
    one_step_epochs = tmp_path / "data"
    paint(one_step_epochs / "1_ltdemo" / "0.png")
    (one_step_epochs / "1_ltdemo" / "0.txt").write_text("ltdemo, a square")
    out, logs = tmp_path / "epochs", []
    # 1 step an epoch, 3 epochs: epoch saves (and their states) after epochs 1 and 2
    train(config_for(tiny_models("sd15"), one_step_epochs, out, train_batch_size=1, max_train_epochs=3,
                     save_every_n_epochs=1, save_state=True, save_last_n_epochs_state=1),
          callbacks=Callbacks(log=logs.append))
    assert sorted(p.name for p in out.glob("opt-0*.safetensors")) == ["opt-000001.safetensors", "opt-000002.safetensors"]
    assert sorted(p.name for p in out.glob("opt-*-state")) == ["opt-000002-state"]
    assert any("removed old state opt-000001-state (save_last_n_epochs_state=1)" in line for line in logs)
    epoch2 = progress(out / "opt-000002-state")
    assert (epoch2["step"], epoch2["epoch"], epoch2["position"]) == (2, 2, 0)
    assert load_file(str(out / "opt-000002-state" / "lora.safetensors")).keys() == \
        load_file(str(out / "opt-state" / "lora.safetensors")).keys()
    assert progress(out / "opt-state")["step"] == 3

    # save_state_on_train_end alone: only the state at the end, no numbered ones
    only_end = tmp_path / "end"
    train(config_for(tiny_models("sd15"), star_dataset, only_end, max_train_steps=3, save_every_n_steps=2,
                     save_state_on_train_end=True), callbacks=Callbacks(log=lambda line: None))
    assert sorted(p.name for p in only_end.iterdir() if p.name.startswith("opt")) == \
        ["opt-state", "opt-step00000002.safetensors"]
    end = progress(only_end / "opt-state")
    assert (end["step"], end["epoch"], end["position"]) == (3, 0, 3)
