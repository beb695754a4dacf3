"""ComfyUI's ModelPatcher (comfy/model_patcher.py at a125cd84) as far as MODEL / CLIP / VAE users
see it, in our own small code: clones share the nn.Module and the backup of original weights and
copy the patch lists; add_patches records (strength_patch, adapter, strength_model, offset,
function) per weight key; loading replaces each patched Parameter with a new tensor computed in
float32 (the original kept in the backup), unpatching puts the original back. Weights stay patched
while the patcher is loaded (comfy_standin.load_models_gpu), exactly as in ComfyUI."""

from __future__ import annotations

import collections
import copy
import uuid

import torch

from comfy_standin import model_management

Backup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


def get_attr(obj, name: str):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(obj, name: str, value):
    *path, last = name.split(".")
    for part in path:
        obj = getattr(obj, part)
    previous = getattr(obj, last)
    setattr(obj, last, value)
    return previous


def set_attr_param(obj, name: str, value):
    return set_attr(obj, name, torch.nn.Parameter(value, requires_grad=False))


def calculate_weight(patches, weight, key, intermediate_dtype=torch.float32):
    """ComfyUI's comfy.lora.calculate_weight for the patch kinds the stand-in knows: adapters
    (objects with .calculate_weight), ("diff", (tensor,)) and ("set", (tensor,))."""
    for strength, value, strength_model, offset, function in patches:
        if offset is not None or function is not None:
            raise NotImplementedError(f"{key}: the stand-in has no offset/function patches")
        if strength_model != 1.0:
            weight *= strength_model
        if hasattr(value, "calculate_weight"):
            weight = value.calculate_weight(weight, key, strength, strength_model, offset, function, intermediate_dtype)
        elif isinstance(value, tuple) and value[0] == "diff":
            diff = value[1][0]
            if diff.shape != weight.shape:
                raise NotImplementedError(f"{key}: diff of shape {tuple(diff.shape)} for weight {tuple(weight.shape)}")
            weight += strength * diff.to(weight.device, intermediate_dtype)
        elif isinstance(value, tuple) and value[0] == "set":
            weight.copy_(value[1][0].to(weight.device, weight.dtype))
        else:
            raise NotImplementedError(f"{key}: the stand-in cannot apply patch {type(value).__name__}")
    return weight


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.size = size
        self.model = model
        if getattr(self.model, "device", None) is None:
            self.model.device = offload_device
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.weight_wrapper_patches = {}
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        self.weight_inplace_update = weight_inplace_update
        self.force_cast_weights = False
        self.patches_uuid = uuid.uuid4()
        self.parent = None
        self.attachments = {}
        self.additional_models = {}
        self.is_clip = False
        for name, default in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                              ("model_lowvram", False), ("current_weight_patches_uuid", None)):
            if not hasattr(self.model, name):
                setattr(self.model, name, default)

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = model_management.module_size(self.model)
        return self.size

    def loaded_size(self):
        return self.model.model_loaded_weight_memory

    def lowvram_patch_counter(self):
        return self.model.lowvram_patch_counter

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size,
                           weight_inplace_update=self.weight_inplace_update)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = self.object_patches.copy()
        n.weight_wrapper_patches = self.weight_wrapper_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup  # shared: any clone can put the originals back
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        n.force_cast_weights = self.force_cast_weights
        n.attachments = dict(self.attachments)
        n.additional_models = {k: [m.clone() for m in v] for k, v in self.additional_models.items()}
        n.is_clip = self.is_clip
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def clone_has_same_weights(self, clone):
        if not self.is_clone(clone):
            return False
        if not self.patches and not clone.patches:
            return True
        return self.patches_uuid == clone.patches_uuid

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return get_attr(self.model, name)

    def model_patches_to(self, device):
        pass  # no transformer_options patches in the stand-in

    def model_patches_models(self):
        return []

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        added = set()
        model_sd = self.model.state_dict()
        for k in patches:
            offset = function = None
            if isinstance(k, str):
                key = k
            else:
                key, offset = k[0], k[1]
                if len(k) > 2:
                    function = k[2]
            if key in model_sd:
                added.add(k)
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
        self.patches_uuid = uuid.uuid4()
        return list(added)

    def get_key_patches(self, filter_prefix=None):
        out = {}
        for k in self.model_state_dict():
            if filter_prefix is not None and not k.startswith(filter_prefix):
                continue
            weight = self.backup[k].weight if k in self.backup else get_attr(self.model, k)
            out[k] = [(weight, lambda a, **kwargs: a)] + self.patches.get(k, [])
        return out

    def model_state_dict(self, filter_prefix=None):
        sd = self.model.state_dict()
        if filter_prefix is not None:
            sd = {k: v for k, v in sd.items() if k.startswith(filter_prefix)}
        return sd

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
        if key not in self.patches:
            return
        weight = get_attr(self.model, key)
        inplace_update = self.weight_inplace_update or inplace_update
        if key not in self.backup:
            self.backup[key] = Backup(weight.to(device=self.offload_device, copy=inplace_update), inplace_update)
        temp = weight.to(torch.float32, copy=True)
        out = calculate_weight(self.patches[key], temp, key).to(weight.dtype)
        if inplace_update:
            weight.data.copy_(out)
        else:
            set_attr_param(self.model, key, out)

    def _load_list(self):
        """(name, module, parameter names) of the modules ComfyUI loads one by one: those holding
        parameters directly and none in sub-modules (a parameter beside sub-modules, such as CLIP's
        logit_scale, is never patched)."""
        out = []
        for name, module in self.model.named_modules():
            own = [n for n, _ in module.named_parameters(recurse=False)]
            if own and len(own) == len(list(module.parameters())):
                out.append((name, module, own))
        return out

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        """Patch the weights of every module not patched yet (on the CPU everything loads
        completely); a module stays marked until unpatch_model, as ComfyUI's comfy_patched_weights."""
        for name, module, params in self._load_list():
            if getattr(module, "comfy_patched_weights", False):
                continue
            for param in params:
                self.patch_weight_to_device(f"{name}.{param}" if name else param, device_to=device_to)
            module.comfy_patched_weights = True
        self.model.model_lowvram = False
        self.model.device = device_to
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.current_weight_patches_uuid = self.patches_uuid

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        for k, obj in self.object_patches.items():
            old = set_attr(self.model, k, obj)
            self.object_patches_backup.setdefault(k, old)
        if load_weights:
            self.load(device_to, lowvram_model_memory, force_patch_weights, full_load=lowvram_model_memory == 0)
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            for k, bk in self.backup.items():
                if bk.inplace_update:
                    get_attr(self.model, k).data.copy_(bk.weight)
                else:
                    set_attr_param(self.model, k, bk.weight)
            self.model.current_weight_patches_uuid = None
            self.backup.clear()
            if device_to is not None:
                self.model.device = device_to
            self.model.model_loaded_weight_memory = 0
            for module in self.model.modules():
                if hasattr(module, "comfy_patched_weights"):
                    del module.comfy_patched_weights
        for k, obj in self.object_patches_backup.items():
            set_attr(self.model, k, obj)
        self.object_patches_backup.clear()

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        """What LoadedModel.model_load runs: undo another patcher's weights when they are not ours,
        then patch ours unless they are in place already."""
        current = self.model.current_weight_patches_uuid
        unpatch_weights = current is not None and (current != self.patches_uuid or force_patch_weights)
        self.unpatch_model(self.offload_device, unpatch_weights=unpatch_weights)
        self.patch_model(load_weights=False)
        if not self.model.model_lowvram and self.model.model_loaded_weight_memory > 0:
            return 0
        self.load(device_to, full_load=True, force_patch_weights=force_patch_weights)
        return self.model.model_loaded_weight_memory

    def detach(self, unpatch_all=True):
        self.model_patches_to(self.offload_device)
        if unpatch_all:
            self.unpatch_model(self.offload_device, unpatch_weights=unpatch_all)
        return self.model

    def current_loaded_device(self):
        return self.model.device

    def pre_run(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self

    def cleanup(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = None

    def __del__(self):
        try:
            self.detach(unpatch_all=False)
        except Exception:  # interpreter shutdown
            pass
