"""Stand-ins for the ComfyUI modules the pack and the core-node stand-ins (comfy_core.py) call,
written after ComfyUI a125cd84's own code: comfy/model_management.py (the interrupt flag and
InterruptProcessingException; the loaded-model list with load_models_gpu / unload_all_models, which
patch and unpatch ModelPatcher weights the way ComfyUI does on a CPU), comfy/utils.py (ProgressBar
calling a global hook) and main.py's hook, which raises the interrupt from inside
ProgressBar.update_absolute. The test executor (graph_runner.py) plugs them into the pack's
comfy_env, so Cancel and model loading reach the nodes the way they do in a real ComfyUI."""

import gc
import logging
import threading
import types
import weakref

import torch

model_management = types.ModuleType("comfy.model_management")
utils = types.ModuleType("comfy.utils")


class InterruptProcessingException(Exception):
    pass


_lock = threading.RLock()
_flag = {"interrupt": False}


def interrupt_current_processing(value=True):
    """What the server's /interrupt (the Cancel button) calls."""
    with _lock:
        _flag["interrupt"] = value


def processing_interrupted():
    with _lock:
        return _flag["interrupt"]


def throw_exception_if_processing_interrupted():
    with _lock:
        if _flag["interrupt"]:
            _flag["interrupt"] = False
            raise InterruptProcessingException()


model_management.InterruptProcessingException = InterruptProcessingException
model_management.interrupt_current_processing = interrupt_current_processing
model_management.processing_interrupted = processing_interrupted
model_management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted


# --- model memory: ComfyUI's loaded-model list on a CPU (VRAMState.DISABLED: weights stay where they
# are, load_models_gpu only patches them; nothing is unloaded until asked) ---
CPU = torch.device("cpu")
current_loaded_models = []  # LoadedModel, most recently loaded first


def get_torch_device():
    return CPU


def intermediate_device():
    return CPU


def get_free_memory(dev=None, torch_free_too=False):
    """On a CPU: the RAM available, as ComfyUI reads it (psutil)."""
    try:
        import psutil

        free = psutil.virtual_memory().available
    except ImportError:
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return (free, free) if torch_free_too else free


def module_size(module):
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


class LoadedModel:
    """A ModelPatcher in current_loaded_models, held weakly; when a clone dies it stands for its parent
    (ComfyUI's _switch_parent), so the weights the clone patched are unpatched when the parent loads."""

    def __init__(self, model):
        self._set_model(model)
        self.device = model.load_device
        self.real_model = None
        self.currently_used = True

    def _set_model(self, model):
        self._model = weakref.ref(model)
        self._patcher_finalizer = None
        if model.parent is not None:
            self._parent_model = weakref.ref(model.parent)
            self._patcher_finalizer = weakref.finalize(model, self._switch_parent)

    def _switch_parent(self):
        model = self._parent_model()
        if model is not None:
            self._set_model(model)

    @property
    def model(self):
        return self._model()

    def model_memory(self):
        return self.model.model_size()

    def model_load(self, force_patch_weights=False):
        self.model.partially_load(self.device, 1e32, force_patch_weights=force_patch_weights)
        real_model = self.model.model
        self.real_model = weakref.ref(real_model)
        self.model_finalizer = weakref.finalize(real_model, cleanup_models)  # drop the entry with the module
        return real_model

    def detach_finalizer(self):
        if getattr(self, "model_finalizer", None) is not None:
            self.model_finalizer.detach()
            self.model_finalizer = None

    def model_unload(self, memory_to_free=None, unpatch_weights=True):
        self.model.detach(unpatch_weights)
        self.detach_finalizer()
        self.real_model = None
        return True

    def is_dead(self):
        return self.real_model is not None and self.real_model() is not None and self.model is None

    def __eq__(self, other):
        return self.model is other.model

    def __del__(self):
        if getattr(self, "_patcher_finalizer", None) is not None:
            self._patcher_finalizer.detach()


def cleanup_models_gc():
    if any(m.is_dead() for m in current_loaded_models):
        gc.collect()


def cleanup_models():
    """Forget loaded models whose nn.Module is gone."""
    current_loaded_models[:] = [m for m in current_loaded_models
                                if m.real_model is not None and m.real_model() is not None]


def soft_empty_cache(force=False):
    pass  # no CUDA cache on the CPU


def free_memory(memory_required, device, keep_loaded=()):
    """Unload (unpatching the weights) every loaded model on ``device`` not in ``keep_loaded``; on a
    CPU ComfyUI's free-memory estimate never covers 1e30 bytes, so unload_all_models unloads all."""
    cleanup_models_gc()
    unloaded = []
    for i in range(len(current_loaded_models) - 1, -1, -1):
        loaded = current_loaded_models[i]
        if loaded.device == device and loaded not in keep_loaded and not loaded.is_dead():
            loaded.currently_used = False
            if loaded.model_unload():
                unloaded.append(current_loaded_models.pop(i))
    return unloaded


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    """ComfyUI's load_models_gpu on a CPU: every loaded clone of the same model is detached WITHOUT
    unpatching (its weights stay patched), then each model's own patches are applied, undoing the
    previous patcher's first when they differ (ModelPatcher.partially_load). Models stay loaded,
    weights patched, until another clone loads or unload_all_models runs."""
    cleanup_models_gc()
    wanted = set(models)
    for m in models:
        wanted.update(m.model_patches_models())
    to_load = []
    for model in wanted:
        loaded = LoadedModel(model)
        if loaded in current_loaded_models:
            loaded = current_loaded_models[current_loaded_models.index(loaded)]
            loaded.currently_used = True
        else:
            logging.info("Requested to load %s", type(model.model).__name__)
        to_load.append(loaded)
    for loaded in to_load:
        for i in range(len(current_loaded_models) - 1, -1, -1):
            if loaded.model.is_clone(current_loaded_models[i].model):
                other = current_loaded_models.pop(i)
                other.model.detach(unpatch_all=False)
                other.detach_finalizer()
    for loaded in to_load:
        loaded.model_load(force_patch_weights=force_patch_weights)
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def loaded_models(only_currently_used=False):
    return [m.model for m in current_loaded_models if m.currently_used or not only_currently_used]


def unload_all_models():
    free_memory(1e30, get_torch_device())


for _f in (get_torch_device, intermediate_device, get_free_memory, module_size, cleanup_models_gc, cleanup_models,
           soft_empty_cache, free_memory, load_models_gpu, load_model_gpu, loaded_models, unload_all_models):
    setattr(model_management, _f.__name__, _f)
model_management.LoadedModel = LoadedModel
model_management.current_loaded_models = current_loaded_models
model_management.OOM_EXCEPTION = torch.OutOfMemoryError
model_management.unet_offload_device = model_management.text_encoder_device = get_torch_device
model_management.text_encoder_offload_device = model_management.vae_device = get_torch_device
model_management.vae_offload_device = get_torch_device

PROGRESS_BAR_HOOK = None


def set_progress_bar_global_hook(function):
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current, self.hook, self.node_id = total, 0, PROGRESS_BAR_HOOK, node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)


utils.ProgressBar = ProgressBar
utils.set_progress_bar_global_hook = set_progress_bar_global_hook


def server_hook(cancel_when=None, cancel_after=None, seen=None):
    """main.py's hook: raise a pending interrupt first, then report progress. The user presses
    Cancel while the bar moves to (value, total) when ``cancel_when(value, total)`` (the hook
    raises at once), or just after it moved when ``cancel_after(value, total)`` (the next check of
    the flag sees it: the node's own, or the next update). ``seen`` collects (value, total)."""

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        if cancel_when is not None and cancel_when(value, total):
            interrupt_current_processing()
        throw_exception_if_processing_interrupted()
        if seen is not None:
            seen.append((value, total))
        if cancel_after is not None and cancel_after(value, total):
            interrupt_current_processing()

    return hook
