"""A small stand-in for ComfyUI's executor: validates an API-format graph against the nodes'
INPUT_TYPES and runs it in dependency order under torch.inference_mode(), as ComfyUI does. Graphs
may mix the pack's nodes with the core-node stand-ins of comfy_core.py (CheckpointLoaderSimple,
KSampler, ...); a link fits an input when their comma-separated type sets overlap, as in ComfyUI's
validate_node_input; hidden inputs get the prompt (PROMPT) and the node's id (UNIQUE_ID), others
None, as ComfyUI's executor fills them. The pack's progress bars are ComfyUI's (comfy_standin.py):
Cancel raises InterruptProcessingException from inside the progress bar's update, as the real
server's hook does; comfy_env's model_management and comfy_sd are the stand-ins' too."""

import contextlib
import json

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


def link_fits(received: str, wanted: str) -> bool:
    """comfy_execution.validation.validate_node_input (non-strict): the type sets overlap."""
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


def node_class(pack, class_type: str):
    """The pack's node of that type, else the core stand-in's."""
    from comfy_core import CORE_NODES

    mappings = pack.nodes.NODE_CLASS_MAPPINGS
    if class_type in mappings:
        return mappings[class_type]
    if class_type in CORE_NODES:
        return CORE_NODES[class_type]
    raise KeyError(f"no node class '{class_type}' in the pack or the core stand-ins")


@contextlib.contextmanager
def comfy_services(env, cancel_when=None, cancel_after=None, progress=None):
    """The stand-in progress bar, interrupt flag, model management and comfy.sd in ``env`` (the
    pack's comfy_env) for one prompt."""
    from comfy_core import comfy_sd

    saved = env.comfy_utils, env.model_management, env.comfy_sd
    env.comfy_utils, env.model_management = comfy_standin.utils, comfy_standin.model_management
    env.comfy_sd = comfy_sd
    comfy_standin.set_progress_bar_global_hook(comfy_standin.server_hook(cancel_when, cancel_after, progress))
    comfy_standin.interrupt_current_processing(False)  # each prompt starts uninterrupted, as in ComfyUI
    try:
        yield
    finally:
        env.comfy_utils, env.model_management, env.comfy_sd = saved
        comfy_standin.set_progress_bar_global_hook(None)


def run_graph(pack, graph: dict, cancel_when=None, cancel_after=None, progress=None, ui=None, cache=None) -> dict:
    """Run ``graph``. ``cancel_when`` / ``cancel_after`` (value, total) -> bool press Cancel while
    or just after a progress bar moves there (comfy_standin.server_hook); the prompt then ends with
    comfy_standin.InterruptProcessingException. ``progress`` collects every (value, total) shown,
    ``ui`` (a dict) each node's "ui" output by node id. ``cache`` (a dict kept between calls) is
    ComfyUI's output cache: a node whose inputs and upstream are unchanged since a prompt that
    finished it is not run again; its outputs (the same objects) are reused."""
    with comfy_services(pack.nodes.comfy_env, cancel_when, cancel_after, progress):
        return _run_graph(pack, graph, ui, cache)


def _signature(graph: dict, node_id) -> str:
    node = graph[node_id]
    inputs = {k: _signature(graph, v[0]) + f"[{v[1]}]" if isinstance(v, list) else v for k, v in node["inputs"].items()}
    return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)


def _run_graph(pack, graph: dict, ui=None, cache=None) -> dict:
    outputs, done = {}, set()

    def run(node_id):
        if node_id in done:
            return
        node = graph[node_id]
        if cache is not None and cache.get(node_id, (None,))[0] == _signature(graph, node_id):
            outputs[node_id] = cache[node_id][1]
            done.add(node_id)
            return
        cls = node_class(pack, node["class_type"])
        types = cls.INPUT_TYPES()
        specs = {**types.get("required", {}), **types.get("optional", {})}
        for name in types.get("required", {}):
            assert name in node["inputs"], f"{node['class_type']}: missing input {name}"
        kwargs = {}
        for name, value in node["inputs"].items():
            spec = specs[name]
            if isinstance(value, list):  # a link: [source node, output index]
                run(value[0])
                source_cls = node_class(pack, graph[value[0]]["class_type"])
                received = source_cls.RETURN_TYPES[value[1]]
                assert link_fits(received, spec[0]), f"{name}: link type mismatch ({received} -> {spec[0]})"
                kwargs[name] = outputs[value[0]][value[1]]
            else:
                validate_input(cls, name, spec, value)
                kwargs[name] = value
        for name, kind in types.get("hidden", {}).items():  # what ComfyUI's executor fills in
            kwargs[name] = {"PROMPT": graph, "UNIQUE_ID": node_id}.get(kind)
        if any(type(v).__name__ == "ExecutionBlocker" for v in kwargs.values()):  # ComfyUI skips the node
            out = tuple(next(v for v in kwargs.values() if type(v).__name__ == "ExecutionBlocker")
                        for _ in cls.RETURN_TYPES)
        else:
            with torch.inference_mode():
                out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict):
            if ui is not None and "ui" in out:
                ui[node_id] = out["ui"]
            out = out.get("result", ())
        outputs[node_id] = out
        assert len(outputs[node_id]) == len(cls.RETURN_TYPES)
        done.add(node_id)
        if cache is not None:
            cache[node_id] = (_signature(graph, node_id), out)

    for node_id in graph:
        run(node_id)
    return outputs
