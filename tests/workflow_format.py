"""ComfyUI's UI workflow format -> API format, by the nodes' own INPUT_TYPES (widget order), as
the frontend does when it queues a graph. Core node types come from the stand-ins' INPUT_TYPES
(comfy_core.py, ComfyUI's own names and order), so a workflow with CheckpointLoaderSimple, KSampler
(whose seed carries the frontend's control_after_generate value after it) ... converts too."""

CORE_OUTPUT_NODES = {"PreviewImage": ["filename_prefix"], "SaveImage": ["filename_prefix"]}
NOTE_NODES = {"Note", "MarkdownNote"}


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")


def widget_names(cls) -> list[str]:
    """Widget names in the order of widgets_values, including the frontend's control value after a
    seed (frontend 1.27: ``control_after_generate`` in the options, else INT inputs named seed /
    noise_seed get one); forceInput inputs are sockets, not widgets."""
    types = cls.INPUT_TYPES()
    names = []
    for name, spec in {**types.get("required", {}), **types.get("optional", {})}.items():
        opts = spec[1] if len(spec) > 1 else {}
        if is_widget(spec) and not opts.get("forceInput"):
            names.append(name)
            control = opts.get("control_after_generate")
            if control is None:
                control = spec[0] == "INT" and name in ("seed", "noise_seed")
            if control:
                names.append("<control_after_generate>")
    return names


def _check_link(link: list, node: dict, slot: int, entry: dict, by_id: dict) -> None:
    """A link [id, from node, from slot, to node, to slot, type] agrees with both of its ends, as
    the real frontend needs it to (graphToPrompt resolves inputs by the link's target slot). An
    input's type and a node's outputs are checked when given (the frontend always writes them;
    hand-written test graphs may leave them out)."""
    link_id, origin, origin_slot, target, target_slot, kind = link[:6]
    assert target == node["id"], f"link {link_id} does not end at node {node['id']}"
    assert target_slot == slot, f"link {link_id} ends at slot {target_slot}, but it is input {slot} '{entry['name']}'"
    if entry.get("type") not in (None, "*"):
        accepted = str(entry["type"]).split(",")  # "LT_LORA,LORA_MODEL": a union, as ComfyUI checks it
        assert kind in accepted, f"link {link_id} is {kind}, input '{entry['name']}' {entry['type']}"
    outputs = by_id[origin].get("outputs")
    if outputs is not None:
        assert origin_slot < len(outputs) and link_id in (outputs[origin_slot].get("links") or []), \
            f"link {link_id} is not listed by output {origin_slot} of node {origin}"


def ui_to_api(workflow: dict, mappings: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    by_id = {node["id"]: node for node in workflow["nodes"]}
    api = {}
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in NOTE_NODES:
            continue
        inputs = {}
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                _check_link(link, node, slot, entry, by_id)
                inputs[entry["name"]] = [str(link[1]), link[2]]
        if kind in mappings:
            names = widget_names(mappings[kind])
        elif kind in CORE_OUTPUT_NODES:
            names = CORE_OUTPUT_NODES[kind][: len(node.get("widgets_values", []))]
        else:
            from comfy_core import CORE_NODES

            if kind not in CORE_NODES:
                raise KeyError(f"node type '{kind}' is neither the pack's nor a core stand-in")
            names = widget_names(CORE_NODES[kind])
        values = node.get("widgets_values", [])
        assert len(values) == len(names), f"{kind}: {len(values)} widget values for widgets {names}"
        for name, value in zip(names, values):
            if not name.startswith("<"):
                inputs[name] = value
        api[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return api
