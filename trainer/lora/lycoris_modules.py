"""LyCORIS adapter modules on a model: made for training or from a file, switched on and off.

LyCORIS modules replace their base module's ``forward`` (``apply_to`` / ``restore``) and are not
children of the model, so the model's own state dict stays the base weights. The modules of one
adapter on one model are kept in a ``ModuleDict`` by adapter name here; several adapters on the
same model stack (each forward calls the one applied before it)."""

from __future__ import annotations

import os
import weakref

import torch

from ..errors import TrainerError

# root module -> {adapter name: ModuleDict of LyCORIS modules by LyCORIS name}
_ATTACHED: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.nn.ModuleDict]]" = \
    weakref.WeakKeyDictionary()


def quiet_kernels() -> None:
    """LyCORIS compiles its weight merges with torch.compile when it can: on a CPU the first step then
    takes about a minute. Eager kernels unless the user chose (LYCORIS_KERNEL_BACKEND)."""
    os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")


def adapters(root) -> dict[str, torch.nn.ModuleDict]:
    return _ATTACHED.get(root, {})


def attach(root, adapter_name: str, modules: dict[str, torch.nn.Module]) -> torch.nn.ModuleDict:
    """Apply ``modules`` ({LyCORIS name: module}) to their base modules in ``root`` as ``adapter_name``
    (replacing an adapter of that name)."""
    detach(root, adapter_name)
    holder = torch.nn.ModuleDict({name.replace(".", "_"): module for name, module in modules.items()})
    for module in holder.values():
        module.forward = _in_input_dtype(module)  # apply_to hands the base module this forward
        module.apply_to()
        module.lt_follow_hook = module.org_module[0].register_forward_pre_hook(_follow(module))
    _ATTACHED.setdefault(root, {})[adapter_name] = holder
    return holder


def detach(root, adapter_name: str) -> bool:
    """Take ``adapter_name``'s modules off ``root``; the other adapters stay applied."""
    held = _ATTACHED.get(root, {})
    if adapter_name not in held:
        return False
    order = list(held)
    for name in reversed(order):  # restore() puts back the forward saved at apply: undo in reverse
        for module in reversed(list(held[name].values())):
            module.restore()
    for module in held[adapter_name].values():
        for attr in ("lt_strength_hook", "lt_follow_hook"):
            hook = getattr(module, attr, None)
            if hook is not None:
                hook.remove()
                setattr(module, attr, None)
    del held[adapter_name]
    for name in order:
        if name in held:
            for module in held[name].values():
                module.apply_to()
    return True


def _in_input_dtype(module):
    """LyCORIS computes the adapted weight in its own dtype (fp32 while training) and needs autocast
    to meet bf16/fp16 activations; training runs under autocast, generating may not: then the
    module runs under autocast to the input's dtype, as the base layer alone would compute."""
    forward = type(module).forward.__get__(module)
    own = next(module.parameters(), None)

    def run(x, *args, **kwargs):
        if (own is not None and torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16)
                and own.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type)):
            with torch.autocast(x.device.type, dtype=x.dtype):
                return forward(x, *args, **kwargs)
        return forward(x, *args, **kwargs)

    return run


def _follow(module):
    """The modules are not children of the model, so ``model.to(device)`` (offloading between
    nodes, paging encoders) leaves them where they are: each follows its input's device."""
    first = next(module.parameters(), None)

    def move(base_module, args):
        if first is not None and args and torch.is_tensor(args[0]) and args[0].device != first.device:
            module.to(args[0].device)

    return move


def set_multipliers(root, strengths: dict[str, float]) -> None:
    """Each adapter of ``root`` at its strength in ``strengths`` (0 for those not named).

    A strength scales the change the module makes to its base module's output, as ComfyUI's
    LoraLoader does (W + s * (W' - W)). That is LyCORIS's multiplier for every algorithm except
    DoRA, where LyCORIS rescales the magnitude only (at 0 the LoRA part stays): DoRA modules run at
    multiplier 1 and a hook on the base module interpolates (one more base forward when s != 1)."""
    for name, holder in adapters(root).items():
        for module in holder.values():
            strength = float(strengths.get(name, 0.0))
            if getattr(module, "wd", False):
                module.multiplier, module.lt_strength = 1.0, strength
                _hook_strength(module)
            else:
                module.multiplier = strength


def _hook_strength(module) -> None:
    if getattr(module, "lt_strength_hook", None) is not None:
        return

    def interpolate(base_module, args, kwargs, out):
        strength = module.lt_strength
        if strength == 1.0:
            return None
        before = module.org_forward(*args, **kwargs)
        return before if strength == 0.0 else before + strength * (out - before)

    module.lt_strength_hook = module.org_module[0].register_forward_hook(interpolate, with_kwargs=True)


def new_module(spec, lora_name: str, base, rank: int, alpha: float):
    """One LyCORIS module of ``spec``'s algorithm on ``base`` (kohya's init for each algorithm)."""
    from lycoris.wrapper import network_module_dict

    try:
        return network_module_dict[spec.module](
            lora_name, base, 1.0, int(rank), float(alpha), spec.dropout, spec.rank_dropout, spec.module_dropout,
            spec.use_tucker, **spec.kwargs)
    except (ValueError, AssertionError, NotImplementedError) as err:
        raise TrainerError(f"{spec.algo} cannot adapt {lora_name} ({type(base).__name__}): {err}") from None


def modules_from_state(tensors: dict, lora_name: str, base):
    """The LyCORIS module a file's tensors ``<lora_name>.*`` describe, on ``base`` (LyCORIS's own
    reader: which algorithm from the keys, shapes and alpha from the tensors)."""
    from lycoris.modules import get_module, make_module

    kind, params = get_module(tensors, lora_name)
    if kind is None:
        return None
    with torch.no_grad():
        module = make_module(kind, params, lora_name, base)
    if module is None:
        raise TrainerError(f"{lora_name}: LyCORIS cannot rebuild a {kind.__name__} from this file.")
    return module


def algo_of(module) -> str:
    """The algorithm of a LyCORIS module as LyCORIS's ``algo`` names it (+ "+dora")."""
    names = {"LoConModule": "lora", "LohaModule": "loha", "LokrModule": "lokr", "DiagOFTModule": "diag-oft"}
    algo = names.get(type(module).__name__, type(module).__name__)
    return algo + ("+dora" if getattr(module, "wd", False) else "")
