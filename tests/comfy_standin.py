"""Stand-ins for the two ComfyUI modules behind the progress bar and Cancel, written after ComfyUI's
own code: comfy/model_management.py (the interrupt flag and InterruptProcessingException),
comfy/utils.py (ProgressBar calling a global hook) and main.py's hook, which raises the interrupt
from inside ProgressBar.update_absolute. The test executor (graph_runner.py) plugs them into the
pack's comfy_env, so Cancel reaches the nodes the way it does in a real ComfyUI."""

import threading
import types

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
