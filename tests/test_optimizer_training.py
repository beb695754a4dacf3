"""kohya's optimizers through the training loop: a schedule-free optimizer samples, saves and ends
with its evaluation weights and resumes exactly; kohya's default Adafactor trains on its own
learning rate."""

import pytest
import torch

from trainer.config import TrainConfig
from trainer.train.distributed import Distributed
from trainer.train.loop import Callbacks, StepLoop, prepare_run, train


def config_for(model_dir, data, out, **values):
    base = dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data), resolution="64",
                network_dim=4, network_alpha=4, learning_rate=1e-2, train_batch_size=4, max_train_steps=3,
                output_dir=str(out), output_name="o", seed=5)
    return TrainConfig(**{**base, **values})


def test_schedule_free_saves_its_evaluation_weights_and_resumes_exactly(tiny_models, star_dataset, tmp_path):
    values = dict(optimizer_type="AdamWScheduleFree", optimizer_args=["warmup_steps=1"])
    setup = prepare_run(config_for(tiny_models("sd15"), star_dataset, tmp_path / "whole", **values), None, None,
                        None, None, Distributed())
    whole = StepLoop(setup).run()
    optimizer = setup.optimizer
    assert not optimizer.param_groups[0]["train_mode"]  # kohya ends in eval mode
    # the LoRA handed back (and saved) is the one the network holds now: the evaluation weights ...
    tensors, _ = setup.network.state_dicts()
    assert all(torch.equal(tensors[k], t) for k, t in whole.lora.tensors.items())
    # ... which differ from the sequence the steps were taken on
    evaluated = [p.detach().clone() for p in setup.network.params]
    optimizer.train()
    assert any(not torch.allclose(p, e) for p, e in zip(setup.network.params, evaluated))

    seen, out = [], tmp_path / "parts"
    first = train(config_for(tiny_models("sd15"), star_dataset, out, **values),
                  callbacks=Callbacks(on_step=lambda s, t, l: seen.append(s), should_stop=lambda: len(seen) >= 1))
    assert first.stopped and (out / "o-state" / "optimizer.pt").is_file()
    resumed = train(config_for(tiny_models("sd15"), star_dataset, out, resume=str(out / "o-state"), **values))
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-6)
    for key, tensor in whole.lora.tensors.items():
        assert (resumed.lora.tensors[key] - tensor).abs().max() <= 1e-6, key


def test_kohya_default_adafactor_trains_on_its_own_learning_rate(tiny_models, star_dataset, tmp_path):
    logs = []
    result = train(config_for(tiny_models("sd15"), star_dataset, tmp_path, optimizer_type="Adafactor",
                              lr_scheduler="cosine", max_train_steps=2), callbacks=Callbacks(log=logs.append))
    assert any("relative_step=True (kohya's default)" in line for line in logs)
    assert any("replaced by Adafactor's own schedule" in line for line in logs)
    assert result.learning_rates[0] == 1e-2  # kohya's AdafactorSchedule reports learning_rate before a step
    assert result.learning_rates[1] != 1e-2  # then Adafactor's relative step size
    assert all(t.abs().sum() > 0 for k, t in result.lora.tensors.items() if k.endswith("lora_up.weight"))
