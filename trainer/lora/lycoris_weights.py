"""LyCORIS files (LoHa, LoKr, DoRA, OFT, LoCon) as modules on a model: for LoRA Load / Sampler
preview and to continue training them (``network_weights``).

The file is first brought to our kohya names (formats.to_kohya: kohya, LyCORIS and ComfyUI-trainer
names all read); each module is then rebuilt by LyCORIS's own reader from its tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainerError
from . import lycoris_modules as lm
from .formats import KOHYA, _resolve, read_lora_file
from .names import kohya_name, module_path, unet_file_name


@dataclass
class LycorisWeights:
    path: str
    tensors: dict[str, dict[str, torch.Tensor]]  # module name (our kohya names) -> its tensors
    where: dict[str, tuple[str, str]]  # module name -> (component, module path)
    family: str = ""
    unet_config: object = None

    @classmethod
    def read(cls, path, family: str, unet_config) -> "LycorisWeights":
        if not Path(path).is_file():
            raise TrainerError(f"network_weights: {path} is not a file. Give the LoRA .safetensors to continue from.")
        return cls.of(read_lora_file(path, family, unet_config), family, unet_config, str(path))

    @classmethod
    def of(cls, tensors: dict, family: str, unet_config, path: str = "") -> "LycorisWeights":
        by_module: dict[str, dict] = {}
        for key, value in tensors.items():
            by_module.setdefault(key.split(".", 1)[0], {})[key] = value
        where = {name: found for name in by_module
                 if (found := _resolve(name, KOHYA, family, unet_config)) is not None}
        return cls(path, by_module, where, family, unet_config)

    def build(self, roots: dict) -> dict[str, dict[str, torch.nn.Module]]:
        """{component: {module name as we write it (SGM names for SDXL): LyCORIS module on its base
        module in ``roots``}} (the modules of components not in ``roots`` are left out)."""
        out: dict[str, dict] = {}
        for name, (part, path) in self.where.items():
            root = roots.get(part)
            if root is None:
                continue
            module = from_tensors(self.tensors[name], name, root.get_submodule(module_path(root, path)))
            if module is not None:
                written = unet_file_name(path, self.family, self.unet_config) if part == "unet" \
                    else kohya_name(part, path, self.family)
                out.setdefault(part, {})[written] = module
        return out


def from_tensors(tensors: dict, name: str, base):
    """LyCORIS's reader for module ``name`` (``tensors``: its ``name.*`` tensors), plus what it
    leaves out: a DoRA scale on the input axis (LyCORIS's wd_on_output=False; its reader assumes
    the output axis)."""
    key = f"{name}.dora_scale"
    scale = tensors.get(key)
    on_input = scale is not None and scale.shape[0] != base.weight.shape[0]
    if on_input:
        tensors = {k: v for k, v in tensors.items() if k != key}
    module = lm.modules_from_state(tensors, name, base)
    alpha = tensors.get(f"{name}.alpha")
    if module is not None and alpha is not None and isinstance(getattr(module, "alpha", None), torch.Tensor):
        # the file's alpha as written: LyCORIS's reader sets none where it has no effect (LoKr with
        # both factors whole), and a continued file should not change it
        with torch.no_grad():
            module.alpha.copy_(alpha.to(module.alpha.dtype))
    if module is not None and on_input:  # the attributes LyCORIS's weight_decompose reads
        module.wd, module.wd_on_out = True, False
        module.dora_norm_dims = base.weight.dim() - 1
        module.dora_scale = torch.nn.Parameter(scale.float().clone())
    return module


def file_algorithms(modules: dict) -> set[str]:
    return {lm.algo_of(m) for parts in modules.values() for m in parts.values()}
