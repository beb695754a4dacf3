"""A small stand-in for ComfyUI's executor: validates an API-format graph against the nodes'
INPUT_TYPES and runs it in dependency order under torch.inference_mode(), as ComfyUI does. The
pack's progress bars are ComfyUI's (comfy_standin.py): Cancel raises InterruptProcessingException
from inside the progress bar's update, as the real server's hook does."""

import contextlib

import torch

import comfy_standin


def validate_input(cls, name, spec, value):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list):
        assert value in kind, f"{cls.__name__}.{name}: {value!r} not in {kind}"
    elif kind == "INT":
        assert isinstance(value, int) and opts.get("min", -2**63) <= value <= opts.get("max", 2**63), (name, value)
    elif kind == "FLOAT":
        assert opts.get("min", -1e308) <= float(value) <= opts.get("max", 1e308), (name, value)
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), (name, value)
    elif kind == "STRING":
        assert isinstance(value, str), (name, value)


@contextlib.contextmanager
def comfy_services(env, cancel_when=None, cancel_after=None, progress=None):
    """The stand-in progress bar and interrupt flag in ``env`` (the pack's comfy_env) for one prompt."""
    saved = env.comfy_utils, env.model_management
    env.comfy_utils, env.model_management = comfy_standin.utils, comfy_standin.model_management
    comfy_standin.set_progress_bar_global_hook(comfy_standin.server_hook(cancel_when, cancel_after, progress))
    comfy_standin.interrupt_current_processing(False)  # each prompt starts uninterrupted, as in ComfyUI
    try:
        yield
    finally:
        env.comfy_utils, env.model_management = saved
        comfy_standin.set_progress_bar_global_hook(None)


def run_graph(pack, graph: dict, cancel_when=None, cancel_after=None, progress=None) -> dict:
    """Run ``graph``. ``cancel_when`` / ``cancel_after`` (value, total) -> bool press Cancel while
    or just after a progress bar moves there (comfy_standin.server_hook); the prompt then ends with
    comfy_standin.InterruptProcessingException. ``progress`` collects every (value, total) shown."""
    with comfy_services(pack.nodes.comfy_env, cancel_when, cancel_after, progress):
        return _run_graph(pack, graph)


def _run_graph(pack, graph: dict) -> dict:
    mappings = pack.nodes.NODE_CLASS_MAPPINGS
    outputs, done = {}, set()

    def run(node_id):
        if node_id in done:
            return
        node = graph[node_id]
        cls = mappings[node["class_type"]]
        types = cls.INPUT_TYPES()
        specs = {**types.get("required", {}), **types.get("optional", {})}
        for name in types.get("required", {}):
            assert name in node["inputs"], f"{node['class_type']}: missing input {name}"
        kwargs = {}
        for name, value in node["inputs"].items():
            spec = specs[name]
            if isinstance(value, list):  # a link: [source node, output index]
                run(value[0])
                source_cls = mappings[graph[value[0]]["class_type"]]
                assert source_cls.RETURN_TYPES[value[1]] == spec[0], f"{name}: link type mismatch"
                kwargs[name] = outputs[value[0]][value[1]]
            else:
                validate_input(cls, name, spec, value)
                kwargs[name] = value
        with torch.inference_mode():
            out = getattr(cls(), cls.FUNCTION)(**kwargs)
        outputs[node_id] = out["result"] if isinstance(out, dict) else out
        assert len(outputs[node_id]) == len(cls.RETURN_TYPES)
        done.add(node_id)

    for node_id in graph:
        run(node_id)
    return outputs
