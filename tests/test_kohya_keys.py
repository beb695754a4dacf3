"""The network we build for the real SD1.5 / SDXL architectures has kohya's keys, shapes and alphas.

The expected lists (tests/data/lora_keys_*.txt) are what kohya-ss/sd-scripts' train_network.py /
sdxl_train_network.py wrote for the same settings on full-size random-weight models
(bench/kohya_parity.py --freeze; their headers say which). Here our network is built the way a
run builds it (the builder ``network_module`` names, then the tensors the saver writes) on
meta-device models: names and shapes without weights, no kohya needed.
"""

import json
import types
from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.families import get_family
from trainer.lora.builders import network_builder, trained_text_encoders
from trainer.models.loaded import LoadedModel
from trainer.models.single_file import CONFIGS

DATA = Path(__file__).parent / "data"
NETWORK = {"network_module": "networks.lora", "network_dim": 8, "network_alpha": 4}
UNET_ONLY = {"network_train_unet_only": True}
WITH_TE = {"unet_lr": 1e-4, "text_encoder_lr": 5e-5}
CONV = {"network_args": ["conv_dim=4", "conv_alpha=2"]}


def frozen(name: str, only_prefix: str = "") -> dict[str, tuple]:
    """{key: (shape, alpha or None)} from a frozen list, optionally only the keys with ``only_prefix``."""
    out = {}
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, *alpha = line.split("\t")
        if key.startswith(only_prefix):
            out[key] = (tuple(json.loads(shape)), float(alpha[0]) if alpha else None)
    return out


def meta_model(family_name: str) -> LoadedModel:
    """The real architecture's UNet and CLIP text encoder(s) on the meta device."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family, root = get_family(family_name), CONFIGS / family_name
    parts = {}
    with torch.device("meta"):
        parts["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet")))
        for name in (n for n in family.text_parts if n.startswith("text_encoder")):
            config = CLIPTextConfig(**json.loads((root / name / "config.json").read_text(encoding="utf-8")))
            parts[name] = (CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel)(config)
    # the pipeline only as the container the builder reads its parts from
    return LoadedModel(family, types.SimpleNamespace(**parts), source="meta", dtype=torch.bfloat16)


def our_keys(family_name: str, values: dict) -> dict[str, tuple]:
    """{key: (shape, alpha or None)} of the kohya-format tensors our saver would write."""
    model = meta_model(family_name)
    config = TrainConfig.from_dict({**NETWORK, **values})
    network = network_builder(config.network_module)(model, config, trained_text_encoders(model, config))
    tensors, _ = network.state_dicts()
    return {key: (tuple(value.shape), float(value) if key.endswith(".alpha") else None)
            for key, value in tensors.items()}


def assert_same(ours: dict, expected: dict):
    only_expected = sorted(set(expected) - set(ours))
    only_ours = sorted(set(ours) - set(expected))
    differ = [(k, expected[k], ours[k]) for k in sorted(set(ours) & set(expected)) if ours[k] != expected[k]]
    assert not (only_expected or only_ours or differ), (
        f"{len(expected)} keys expected (kohya), {len(ours)} ours; "
        f"{len(only_expected)} only kohya's, e.g. {only_expected[:5]}; "
        f"{len(only_ours)} only ours, e.g. {only_ours[:5]}; "
        f"{len(differ)} with another shape or alpha (key, kohya's, ours), e.g. {differ[:5]}")


@pytest.mark.parametrize("family_name, values, expected_file, prefix", [
    ("sd15", UNET_ONLY, "lora_keys_sd15.txt", ""),
    ("sd15", {**CONV, **WITH_TE}, "lora_keys_sd15_conv.txt", ""),
    ("sdxl", WITH_TE, "lora_keys_sdxl.txt", ""),
    ("sdxl", UNET_ONLY, "lora_keys_sdxl.txt", "lora_unet_"),  # kohya's UNet-only run: the same UNet keys
], ids=["sd15-unet", "sd15-conv-te", "sdxl-unet-te", "sdxl-unet"])
def test_network_has_kohyas_keys(family_name, values, expected_file, prefix):
    expected = frozen(expected_file, prefix)
    assert expected, f"{expected_file} lists no keys"
    assert_same(our_keys(family_name, values), expected)
