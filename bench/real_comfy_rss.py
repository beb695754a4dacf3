"""Peak memory of "Load Checkpoint -> LoRA Train -> LoRA Apply -> KSampler" in a real ComfyUI (not CI).

    python bench/real_comfy_rss.py --comfy COMFYUI_DIR [--python PY] [--checkpoint NAME] [--cases base before after]

Item 4 of issue 17: one fresh server per case, peak RSS (VmHWM of the server process) of
"Load Checkpoint -> LoRA Train 10 steps at 256 px -> LoRA Apply -> KSampler" on the SD1.5 checkpoint,
trained BEFORE from a second copy (Kolors/SDXL Loader on the same file, fp32) and AFTER from the
MODEL/CLIP/VAE, and BASE: the same graph without training (ComfyUI's own peak). Beside it the bytes
of the weights ComfyUI holds (the checkpoint's tensors at the dtypes ComfyUI's log reports) and, per
node, VmRSS at its start and its highest sample (every 0.2 s; anon and file-backed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_comfy_core_graphs import (GB, PREFIX, SAMPLE_STEPS, SIZE, TRAIN_OPTIONS, TRAIN_STEPS,  # noqa: E402
                                    Server, proc_status, queue)


def rss_graph(checkpoint, case: str):
    """Load Checkpoint -> LoRA Train (10 steps, 256 px) -> LoRA Apply -> CLIPTextEncode -> KSampler -> VAEDecode.
    case "after": trained from Load Checkpoint's MODEL/CLIP/VAE; "before": from a second copy (our loader on
    the same file, as before issue 17); "base": no training at all (ComfyUI's own share of the peak)."""
    p = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": "lora_dataset", "repeats": 10,
                                                           "trigger_word": "ltdemo", "caption_extension": ".txt",
                                                           "regularization_folder": "", "captions": ""}},
        "3": {"class_type": "LT_SmartCrop", "inputs": {"dataset": ["2", 0], "mode": "center", "size": "custom",
                                                       "custom_width": SIZE, "custom_height": SIZE}},
        "4": {"class_type": "LT_TrainingOptions", "inputs": {"settings": TRAIN_OPTIONS}},
        "5": {"class_type": "LT_LoraTrain", "inputs": {
            "dataset": ["3", 0], "options": ["4", 0], "preset": "none", "output_name": f"{PREFIX}_rss",
            "resolution": str(SIZE), "network_dim": 16, "network_alpha": 8.0, "learning_rate": 1e-4,
            "max_train_epochs": 1, "train_batch_size": 1, "mixed_precision": "no", "gradient_checkpointing": True,
            "seed": 42, "sample_prompt": "", "network": "LoRA"}},
        "6": {"class_type": "LT_LoraApply", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora": ["5", 0],
                                                       "strength_model": 1.0, "strength_clip": 1.0,
                                                       "lora_name": "none"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 1], "text": "ltdemo, a yellow star"}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["6", 1], "text": "lowres, blurry"}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {"model": ["6", 0], "positive": ["7", 0], "negative": ["8", 0],
                                                    "latent_image": ["9", 0], "seed": 42, "steps": SAMPLE_STEPS,
                                                    "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                                                    "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    if case == "before":  # our loader reads the same file again, LoRA Train on its pipeline
        p["13"] = {"class_type": "LT_KolorsSDXLLoader", "inputs": {
            "model": f"checkpoints/{checkpoint}", "family": "auto", "dtype": "fp32", "vae": "none",
            "chatglm_precision": "same as dtype", "chatglm3": "none", "offload": "keep loaded"}}
        p["5"]["inputs"]["pipeline"] = ["13", 0]
    elif case == "after":
        p["5"]["inputs"].update(model=["1", 0], clip=["1", 1], vae=["1", 2])
    else:
        for nid in ("2", "3", "4", "5", "6"):
            del p[nid]
        p["7"]["inputs"]["clip"] = p["8"]["inputs"]["clip"] = ["1", 1]
        p["10"]["inputs"]["model"] = ["1", 0]
    return p


DTYPE_BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.float8_e4m3fn": 1,
               "torch.float8_e5m2": 1}
PARTS = {"unet": ("model.diffusion_model.",), "clip": ("cond_stage_model.", "conditioner."),
         "vae": ("first_stage_model.",)}


def held_weights(checkpoint: Path, log: str) -> dict:
    """Bytes of the weights ComfyUI holds: each part's element count (the file's header) at the dtype
    ComfyUI's log says it keeps that part in."""
    found = {"unet": re.findall(r"model weight dtype (torch\.\w+)", log),
             "clip": re.findall(r"CLIP/text encoder model load device: .*dtype: (torch\.\w+)", log),
             "vae": re.findall(r"VAE load device: .*dtype: (torch\.\w+)", log)}
    with open(checkpoint, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    out = {}
    for part, prefixes in PARTS.items():
        count = sum(math.prod(v["shape"]) for k, v in header.items()
                    if k != "__metadata__" and k.startswith(prefixes) and v["dtype"] in ("F32", "F16", "BF16"))
        dtype = found[part][0] if found[part] else "torch.float32"
        out[part] = (count, dtype, count * DTYPE_BYTES.get(dtype, 4))
    return out


def rss_case(args, case):
    graph = rss_graph(args.checkpoint, case)
    with Server(comfy=args.comfy, python=args.python, port=args.port, extra=args.server_arg) as server:
        idle = proc_status(server.pid)
        run = asyncio.run(queue(server.url, graph, pid=server.pid))
        final = proc_status(server.pid)
        log = server.log_text()
    if not run.ok:
        print(f"{case}: FAIL {run.status}: {run.error}")
        return None
    nodes = {}  # per node in execution order: RSS at its start and its highest sample
    for _, node, st in run.samples:
        if node in graph:
            entry = nodes.setdefault(node, {"start": st, "max": st})
            if st["VmRSS"] > entry["max"]["VmRSS"]:
                entry["max"] = st
    # the peak came while the node of the last sample before VmHWM reached its final value ran (or as it ended)
    rise = next((i for i, (_, _, st) in enumerate(run.samples) if st["VmHWM"] >= final["VmHWM"]), None)
    peak_node = run.samples[max(rise - 1, 0)][1] if rise is not None else None
    return {"case": case, "graph": graph, "idle": idle, "final": final, "nodes": nodes, "elapsed": run.elapsed,
            "log": log, "peak_node": peak_node}


CASES = {"base": "BASE   (no training: Load Checkpoint -> CLIPTextEncode -> KSampler -> VAEDecode)",
         "before": "BEFORE (LoRA Train on Kolors/SDXL Loader's second copy of the file, fp32)",
         "after": "AFTER  (LoRA Train on Load Checkpoint's MODEL/CLIP/VAE)"}


def rss_mode(args):
    checkpoint = Path(args.comfy) / "models" / "checkpoints" / args.checkpoint
    for arg in args.server_arg:  # a scratch --base-directory has its own models/
        if arg.startswith("--base-directory="):
            checkpoint = Path(arg.split("=", 1)[1]) / "models" / "checkpoints" / args.checkpoint
    results = [rss_case(args, case) for case in args.cases]
    if not all(results):
        return False
    weights = held_weights(checkpoint.resolve(), results[-1]["log"])
    total = sum(b for _, _, b in weights.values())
    print(f"checkpoint {args.checkpoint}: weights ComfyUI holds = {total / GB:.3f} GB (" +
          ", ".join(f"{p} {c / 1e6:.1f} M x {d.split('.')[-1]} = {b / GB:.3f} GB" for p, (c, d, b) in weights.items())
          + ")")
    print(f"graph: Load Checkpoint -> LoRA Train {TRAIN_STEPS} steps at {SIZE}px (batch 1, fp32, gradient "
          f"checkpointing, dim 16) -> LoRA Apply -> KSampler {SAMPLE_STEPS} steps at {SIZE}px; a fresh server per "
          "case; GB = 1e9 bytes; RSS = anon + file-backed (the mmapped checkpoint while it loads)")
    peaks = {}
    for r in results:
        hwm = r["final"]["VmHWM"]
        peaks[r["case"]] = hwm
        print(f"{CASES[r['case']]}: peak RSS {hwm / GB:.3f} GB = weights + {(hwm - total) / GB:.3f} GB "
              f"(x{hwm / total:.2f}); idle server {r['idle']['VmRSS'] / GB:.3f} GB; {r['elapsed']:.0f} s")
        for node, e in r["nodes"].items():
            top = e["max"]
            rise = "  <- the peak: while this ran or as it ended" if node == r["peak_node"] else ""
            label = f"{r['graph'][node]['class_type']} ({node})"
            print(f"    {label:30s} RSS {e['start']['VmRSS'] / GB:6.3f} -> "
                  f"max {top['VmRSS'] / GB:6.3f} GB (anon {top['RssAnon'] / GB:.3f}, file {top['RssFile'] / GB:.3f})"
                  f"{rise}")
        if r["peak_node"] is None:
            print("    (the peak came after the last sample)")
        train = next((e for n, e in r["nodes"].items() if r["graph"][n]["class_type"] == "LT_LoraTrain"), None)
        if train:
            share = train["max"]["VmRSS"] - train["start"]["VmRSS"]
            print(f"    LoRA Train's own share: +{share / GB:.3f} GB over the RSS it started at")
    if "after" in peaks:
        after, target = peaks["after"], total + 1.5 * GB
        extra = "".join(f"; {k.upper()} {v / GB:.3f} GB" for k, v in peaks.items() if k != "after")
        print(f"target peak <= weights + 1.5 GB = {target / GB:.3f} GB: {'holds' if after <= target else 'MISSED'} "
              f"(AFTER {after / GB:.3f} GB{extra})")
        return after <= target
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--comfy", required=True, help="the ComfyUI checkout to start (a fresh server per case)")
    ap.add_argument("--python", help="its Python (default: this one)")
    ap.add_argument("--port", type=int, help="the port to start it on (default: a free one)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="passed to main.py, e.g. --server-arg=--base-directory=DIR")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=["base", "before", "after"],
                    help="which graphs (a fresh server each)")
    ap.add_argument("--checkpoint", default="anything-v5.safetensors", help="the SD1.5 file in models/checkpoints")
    return 0 if rss_mode(ap.parse_args()) else 1


if __name__ == "__main__":
    sys.exit(main())
