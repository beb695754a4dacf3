"""``network_weights``: start training from an existing LoRA file (kohya's continue-training).

Any layout trainer.lora.formats reads (kohya, diffusers/peft, ComfyUI's trainer, DiffSynth) is
brought to our module paths first. With ``dim_from_weights`` the network is the file's: its
modules at its ranks and alphas (kohya's create_network_from_weights); without it the network is
built from the config and each module of the file must fit it (same rank)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainerError
from .names import module_path


@dataclass
class NetworkWeights:
    path: str
    # component (unet, text_encoder, text_encoder_2) -> module path -> (down, up, alpha)
    parts: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]]

    @classmethod
    def read(cls, path, family: str, unet_config) -> "NetworkWeights":
        from .formats import KOHYA, _resolve, read_lora_file

        if not Path(path).is_file():
            raise TrainerError(f"network_weights: {path} is not a file. Give the LoRA .safetensors to continue from.")
        from .formats import is_lycoris

        tensors = read_lora_file(path, family, unet_config)
        if is_lycoris(tensors):
            kinds = sorted({k.rsplit(".", 1)[-1].split("_")[0] for k in tensors
                            if not k.endswith((".alpha", "weight"))})
            raise TrainerError(f"network_weights: {Path(path).name} is a LyCORIS file ({', '.join(kinds)} parts): "
                               "continue it with network_module = \"lycoris.kohya\" and network_args algo= (and "
                               "dora_wd=True) as it was trained, or network = LoHa / LoKr / DoRA / OFT.")
        parts: dict = {}
        for key in tensors:
            if not key.endswith(".lora_down.weight"):
                continue
            name = key.removesuffix(".lora_down.weight")
            component, module_path = _resolve(name, KOHYA, family, unet_config)
            parts.setdefault(component, {})[module_path] = (
                tensors[key], tensors[f"{name}.lora_up.weight"], float(tensors[f"{name}.alpha"]))
        return cls(str(path), parts)

    def modules(self, component: str, root) -> dict[str, tuple[int, float]]:
        """{path in ``root``: (rank, alpha)} of ``component``'s modules in the file."""
        return {module_path(root, path): (int(down.shape[0]), alpha)
                for path, (down, up, alpha) in self.parts.get(component, {}).items()}

    def load_into(self, model, text_encoders: list[str], log=None) -> int:
        """Copy the file's weights into the run's LoRA layers; returns how many modules were loaded.
        Where the file's alpha differs from the run's, the up weight is rescaled so the LoRA starts
        with exactly the file's effect."""
        from .network import ADAPTER

        loaded, unused = 0, []
        roots = {"unet": model.unet} | {name: getattr(model.pipe, name) for name in text_encoders}
        for component, modules in self.parts.items():
            root = roots.get(component)
            for path, (down, up, alpha) in modules.items():
                layer = _lora_layer(root, path, ADAPTER)
                if layer is None:
                    unused.append(f"{component}.{path}")
                    continue
                a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
                if tuple(a.shape) != tuple(down.shape) or tuple(b.shape) != tuple(up.shape):
                    raise TrainerError(
                        f"network_weights: {component} module {path} has rank {down.shape[0]} in {self.path}, the "
                        f"network has rank {a.shape[0]}: set dim_from_weights = true (or network_dim / conv_dim "
                        "to the file's ranks).")
                trained_alpha = layer.lora_alpha[ADAPTER]
                with torch.no_grad():
                    a.copy_(down.to(a.dtype))
                    b.copy_((up.float() * (alpha / trained_alpha)).to(b.dtype))
                loaded += 1
        if log:
            log(f"network_weights: {loaded} modules loaded from {Path(self.path).name}"
                + (f"; {len(unused)} of its modules are not in this network (e.g. {unused[0]})" if unused else ""))
        return loaded


def _lora_layer(root, path: str, adapter: str):
    if root is None:
        return None
    try:
        layer = root.get_submodule(module_path(root, path))
    except AttributeError:
        return None
    lora_a = getattr(layer, "lora_A", None)
    return layer if lora_a is not None and adapter in lora_a else None
