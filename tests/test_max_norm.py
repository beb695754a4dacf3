"""scale_weight_norms: kohya's max-norm regularisation on peft LoRA layers (Linear, 1x1 and 3x3
conv), found by walking the modules, with kohya's report (keys scaled, mean and max norm)."""

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.lora.max_norm import MaxNorm, apply_max_norm, delta_norm, lora_pairs
from trainer.lora.network import ADAPTER
from trainer.train.loop import Callbacks, train


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 24)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv1 = nn.Conv2d(12, 6, 1)
        self.small = nn.Linear(24, 8)


def lora_block(seed=0):
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    block = Block()
    config = LoraConfig(r=4, lora_alpha=2, target_modules=["proj", "conv3", "conv1", "small"])
    inject_adapter_in_model(config, block, adapter_name=ADAPTER)
    for name in ("proj", "conv3", "conv1"):  # big weights: deltas far above 1
        layer = getattr(block, name)
        nn.init.normal_(layer.lora_A[ADAPTER].weight, std=2.0)
        nn.init.normal_(layer.lora_B[ADAPTER].weight, std=2.0)
    nn.init.normal_(block.small.lora_B[ADAPTER].weight, std=1e-3)  # tiny delta: left alone
    return block


def peft_delta_norm(layer) -> float:
    """peft's own delta (scale * up @ down, conv-composed for 3x3) as the reference."""
    with torch.no_grad():
        return float(layer.get_delta_weight(ADAPTER).norm())


def test_delta_norm_is_the_norm_of_the_weight_delta():
    block = lora_block()
    for name in ("proj", "conv3", "conv1", "small"):
        layer = getattr(block, name)
        got = delta_norm(layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, layer.scaling[ADAPTER])
        assert float(got) == pytest.approx(peft_delta_norm(layer), rel=1e-5)


def test_max_norm_brings_big_modules_down_to_max_norm_and_counts_them():
    block = lora_block()
    before = {name: peft_delta_norm(getattr(block, name)) for name in ("proj", "conv3", "conv1", "small")}
    assert min(before["proj"], before["conv3"], before["conv1"]) > 10 and before["small"] < 1
    report = MaxNorm([block], 1.0)()
    assert len(lora_pairs([block])) == 4
    assert report.keys_scaled == 3
    after = {name: peft_delta_norm(getattr(block, name)) for name in before}
    for name in ("proj", "conv3", "conv1"):
        assert after[name] == pytest.approx(1.0, rel=1e-5)
    assert after["small"] == before["small"]
    assert report.max_norm == pytest.approx(1.0, rel=1e-5)
    assert report.mean_norm == pytest.approx((3 + before["small"]) / 4, rel=1e-5)
    assert report.logs() == {"max_norm/keys_scaled": 3, "max_norm/max_key_norm": report.max_norm,
                             "norm/avg_key_norm": report.mean_norm}
    # once at max_norm, nothing more to scale
    assert MaxNorm([block], 1.0)().keys_scaled == 0


def test_up_and_down_are_scaled_by_the_same_factor():
    block = lora_block()
    layer = block.proj
    down, up = layer.lora_A[ADAPTER].weight.detach().clone(), layer.lora_B[ADAPTER].weight.detach().clone()
    ratio = 1.0 / peft_delta_norm(layer)
    apply_max_norm(lora_pairs([block]), 1.0)
    assert torch.allclose(layer.lora_A[ADAPTER].weight, down * ratio ** 0.5, rtol=1e-5)
    assert torch.allclose(layer.lora_B[ADAPTER].weight, up * ratio ** 0.5, rtol=1e-5)


def test_no_lora_layers_means_no_report():
    assert apply_max_norm(lora_pairs([nn.Linear(3, 3)]), 1.0) is None


def train_config(model_dir, data, out, **values):
    return TrainConfig(**{**dict(pretrained_model_name_or_path=str(model_dir), train_data_dir=str(data),
                                 resolution="64", network_dim=4, network_alpha=4, learning_rate=1e-2,
                                 train_batch_size=2, max_train_steps=2, output_dir=str(out), output_name="mn"),
                          **values})


def test_scale_weight_norms_in_a_run_caps_every_unet_and_text_encoder_module(tiny_models, star_dataset, tmp_path):
    logs, metrics = [], []
    cap = 1e-3  # measured: one step at lr 1e-2 leaves deltas of about 0.01-0.1 on the tiny SD1.5
    result = train(train_config(tiny_models("sd15"), star_dataset, tmp_path, scale_weight_norms=cap,
                                text_encoder_lr=1e-2),
                   callbacks=Callbacks(log=logs.append, on_metrics=lambda step, values: metrics.append((step, values))))
    assert result.steps == 2
    assert [step for step, _ in metrics] == [1, 2]
    first = metrics[0][1]
    pairs = lora_pairs([result.model.unet, result.model.pipe.text_encoder])
    te_pairs = lora_pairs([result.model.pipe.text_encoder])
    assert te_pairs and len(pairs) > len(te_pairs)
    assert 0 < first["max_norm/keys_scaled"] <= len(pairs)
    assert first["max_norm/max_key_norm"] == pytest.approx(cap, rel=1e-4)
    assert first["norm/avg_key_norm"] <= cap * (1 + 1e-4)
    norms = [float(delta_norm(down, up, scale)) for down, up, scale in pairs]
    assert max(norms) <= cap * (1 + 1e-4)
    line = next(line for line in logs if line.startswith("scale_weight_norms"))
    assert f"{first['max_norm/keys_scaled']} of {len(pairs)} modules scaled" in line


def test_scale_weight_norms_off_reports_nothing_and_negative_is_refused(tiny_models, star_dataset, tmp_path):
    metrics = []
    train(train_config(tiny_models("sd15"), star_dataset, tmp_path, max_train_steps=1),
          callbacks=Callbacks(on_metrics=lambda step, values: metrics.append(values)))
    assert metrics == []
    with pytest.raises(TrainerError, match="scale_weight_norms must be positive"):
        train(train_config(tiny_models("sd15"), star_dataset, tmp_path, max_train_steps=1, scale_weight_norms=-1.0))


def test_the_cli_progress_bar_shows_kohyas_postfix(capsys):
    from trainer.progress import tqdm_callbacks

    callbacks, close = tqdm_callbacks()
    callbacks.on_start(3, None)
    callbacks.on_metrics(1, {"max_norm/keys_scaled": 5, "max_norm/max_key_norm": 1.0, "norm/avg_key_norm": 0.75})
    callbacks.on_step(1, 3, 0.5)
    close()
    err = capsys.readouterr().err
    assert "Keys Scaled=5" in err and "Average key norm=0.7500" in err
