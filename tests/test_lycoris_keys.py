"""``network_module = "lycoris.kohya"`` on the real SD1.5 / SDXL UNets: kohya + LyCORIS's keys, shapes and alphas.

The expected lists (tests/data/lycoris_keys_*.txt) are what kohya-ss/sd-scripts'
train_network.py / sdxl_train_network.py with lycoris-lora wrote for the same network_args on
full-size random-weight models (bench/kohya_parity.py --freeze; their headers say which). Our modules are made the way
build_lycoris makes them (lycoris_unet_targets for which modules, unet_file_name for their names,
lycoris_modules.new_module for the module) on a meta-device UNet; each base module is given
storage only while its LyCORIS module is made (DoRA reads the base weight's norm), so no
full-size weights are ever in memory and no kohya is needed.
"""

import copy
from functools import lru_cache

import pytest
import torch

from test_kohya_keys import assert_same, frozen
from trainer.config import TrainConfig
from trainer.lora import lycoris_modules as lm
from trainer.lora.lycoris_builder import lycoris_unet_targets
from trainer.lora.lycoris_spec import lycoris_spec
from trainer.lora.names import unet_file_name
from trainer.models.single_file import CONFIGS

NETWORK = {"network_module": "lycoris.kohya", "network_dim": 8, "network_alpha": 4, "network_train_unet_only": True}


@lru_cache(maxsize=None)
def meta_unet(family: str):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(CONFIGS / family / "unet")))


def spec_of(network_args: list[str]):
    return lycoris_spec(TrainConfig.from_dict({**NETWORK, "network_args": network_args}))


def our_keys(family: str, network_args: list[str]) -> dict[str, tuple]:
    """{key: (shape, alpha or None)} of the LyCORIS state dict our run would save."""
    lm.quiet_kernels()
    unet, spec = meta_unet(family), spec_of(network_args)
    out = {}
    for path, (rank, alpha) in lycoris_unet_targets(unet, spec, family).items():
        name = unet_file_name(path, family, unet.config)
        base = copy.deepcopy(unet.get_submodule(path)).to_empty(device="cpu")  # storage for this module only
        with torch.no_grad():
            for p in base.parameters():
                p.fill_(1.0)
        for key, value in lm.new_module(spec, name, base, rank, alpha).state_dict().items():
            full = f"{name}.{key}"
            assert full not in out, f"{full} made twice"
            out[full] = (tuple(value.shape), float(value) if key == "alpha" else None)
    return out


@pytest.mark.parametrize("family, algo, network_args", [
    ("sd15", "loha", ["algo=loha", "preset=attn-mlp"]),
    ("sd15", "lokr", ["algo=lokr", "preset=attn-mlp"]),
    ("sd15", "dora", ["algo=lora", "dora_wd=True", "preset=attn-mlp"]),
    ("sd15", "oft", ["algo=diag-oft", "preset=attn-mlp"]),
    ("sdxl", "lokr", ["algo=lokr", "preset=attn-mlp"]),
], ids=["sd15-loha", "sd15-lokr", "sd15-dora", "sd15-oft", "sdxl-lokr"])
def test_attn_mlp_has_kohya_lycoris_keys(family, algo, network_args):
    expected = frozen(f"lycoris_keys_{family}_{algo}.txt")
    assert expected, f"lycoris_keys_{family}_{algo}.txt lists no keys"
    assert_same(our_keys(family, network_args), expected)


def test_sd15_full_preset_builds_every_module_once():
    """kohya + LyCORIS 4.1.3 stop on SD1.5 with ``duplicated lora name:
    lora_unet_time_embedding_linear_1`` (the preset names that module and also lists its class);
    ours puts one module on every Linear / Conv2d of the UNet, that one included."""
    unet = meta_unet("sd15")
    targets = lycoris_unet_targets(unet, spec_of(["algo=loha"]), "sd15")
    every = [p for p, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert sorted(targets) == sorted(every)
    keys = our_keys("sd15", ["algo=loha"])  # makes each module, fails on a name made twice
    names = {key.split(".", 1)[0] for key in keys}
    assert len(names) == len(every)
    assert "lora_unet_time_embedding_linear_1" in names
    attn_mlp = {key.split(".", 1)[0] for key in frozen("lycoris_keys_sd15_loha.txt")}
    assert attn_mlp < names  # full is attn-mlp and more (the ResNet convs, conv_in/out)


def test_sdxl_attn_mlp_is_kohyas_module_set():
    """kohya's own SDXL UNet has plain Sequentials for its time / label embeddings (no
    TimestepEmbedding class), so LyCORIS's attn-mlp puts nothing there; neither may we. kohya +
    LyCORIS 4.1.3 (algo=lokr preset=attn-mlp, bench/kohya_parity.py sdxl_lokr) wrote exactly the
    722 modules of kohya's networks.lora SDXL UNet, frozen in lora_keys_sdxl.txt."""
    unet = meta_unet("sdxl")
    targets = lycoris_unet_targets(unet, spec_of(["algo=lokr", "preset=attn-mlp"]), "sdxl")
    embeddings = [p for p in targets if p.startswith(("time_embedding", "add_embedding"))]
    assert not embeddings, embeddings
    names = {unet_file_name(path, "sdxl", unet.config) for path in targets}
    assert len(names) == len(targets)
    assert names == {key.split(".", 1)[0] for key in frozen("lora_keys_sdxl.txt", "lora_unet_")}
