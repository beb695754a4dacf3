"""Failures in a real ComfyUI are loud and leave nothing behind.

    python bench/real_comfy_failures.py COMFYUI_DIR [--port 8199] [--checkpoint anything-v5.safetensors]

COMFYUI_DIR is a ComfyUI checkout with this pack in custom_nodes/ and its server listening on
--port (nothing is fetched or started here; run it with a Python that has aiohttp, e.g. ComfyUI's).
The checkpoint (an SD1.5 single file in models/checkpoints, e.g. the full-size random one
real_comfy_cancel.py writes) is loaded once by core CheckpointLoaderSimple and shared by every
prompt, as ComfyUI caches it. Then, each through POST /prompt:

1. a base image (CLIPTextEncode -> KSampler -> VAEDecode, no LoRA);
2. LoRA Train on the MODEL/CLIP/VAE with unet_lr = 1e30 (the loss turns NaN), an empty dataset
   folder, and a diffusers model folder whose UNet config is missing (our loader): each prompt must
   end with an execution error whose message is our one line, and the server must answer after it;
3. the base image again: bit-identical (no weight left half-patched);
4. the fixed graph queued again, same server, no restart: it trains and LoRA Apply generates.

One line per check; exit status 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_comfy_cancel import DATASET, Server, line, prepare  # noqa: E402

EMPTY = "lt_bench_empty"  # input/<EMPTY>: a dataset folder without images
BROKEN = "LT-bench-broken"  # models/diffusers/<BROKEN>: a copy of the tiny Kolors without unet/config.json


def base_nodes(checkpoint: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "ltdemo, a star"}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "positive": ["11", 0],
                                                     "negative": ["12", 0], "latent_image": ["13", 0], "denoise": 1.0}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["1", 2]}},
        "16": {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "lt_bench_failures/base"}},
    }


def train_nodes(checkpoint: str, folder: str = DATASET, settings: str = "", name: str = "lt_bench_failures") -> dict:
    """Train, then sample with the LoRA. Without the base KSampler branch: ComfyUI keeps only the
    outputs of the last prompt's nodes, so the base KSampler runs again afterwards (on the same,
    cached MODEL) instead of answering from the cache."""
    base = {k: v for k, v in base_nodes(checkpoint).items() if k not in ("14", "15", "16")}
    return {
        **base,
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": folder, "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "3": {"class_type": "LT_TrainingOptions", "inputs": {"settings": settings + "max_train_steps = 2\n"}},
        "4": {"class_type": "LT_LoraTrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], "options": ["3", 0],
            "preset": "none", "output_name": name, "resolution": "64", "network_dim": 4, "network_alpha": 4.0,
            "learning_rate": 1e-4, "max_train_epochs": 1, "train_batch_size": 4, "mixed_precision": "no",
            "gradient_checkpointing": True, "seed": 7}},
        "20": {"class_type": "LT_LoraApply", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora": ["4", 3],
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "21": {"class_type": "KSampler", "inputs": {**base_nodes(checkpoint)["14"]["inputs"], "model": ["20", 0]}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["1", 2]}},
        "23": {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": "lt_bench_failures/lora"}},
    }


def broken_loader_nodes() -> dict:
    return {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": f"diffusers/{BROKEN}", "family": "auto",
                                                               "dtype": "fp32"}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": DATASET, "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "4": {"class_type": "LT_LoraTrain", "inputs": {
            "pipeline": ["1", 0], "dataset": ["2", 0], "preset": "none", "output_name": "lt_bench_broken",
            "resolution": "64", "network_dim": 4, "network_alpha": 4.0, "learning_rate": 1e-4, "max_train_epochs": 1,
            "train_batch_size": 4, "mixed_precision": "no", "gradient_checkpointing": False, "seed": 7}},
    }


async def settled(server: Server, result: dict, node: str) -> dict:
    """The prompt's history once ComfyUI has filed ``node``'s images (the success event may come
    before the history entry is complete)."""
    prompt_id = result.get("prompt_id")
    for _ in range(50):
        if result["history"].get("outputs", {}).get(node) or not prompt_id:
            break
        await asyncio.sleep(0.2)
        result["history"] = await server.history(prompt_id)
    return result


def image_digest(comfy: Path, result: dict, node: str) -> str | None:
    images = result["history"].get("outputs", {}).get(node, {}).get("images", [])
    if not images:
        return None
    path = comfy / "output" / images[0]["subfolder"] / images[0]["filename"]
    return hashlib.sha256(_pixels(path)).hexdigest()[:16]


def _pixels(path: Path) -> bytes:
    from PIL import Image

    return Image.open(path).convert("RGB").tobytes()


def prepare_failures(comfy: Path) -> None:
    prepare(comfy)  # the tiny Kolors (behind a symlink) and the painted dataset
    (comfy / "input" / EMPTY).mkdir(parents=True, exist_ok=True)
    broken = comfy / "models" / "diffusers" / BROKEN
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(comfy / "lt_bench_store" / "TinyKolors", broken)
    (broken / "unet" / "config.json").unlink()


def cached_nodes(result: dict) -> set:
    return {n for kind, data in result["history"].get("status", {}).get("messages", []) if kind == "execution_cached"
            for n in data.get("nodes", [])}


async def alive(session, url: str) -> bool:
    async with session.get(f"{url}/system_stats") as r:
        return r.status == 200


async def check(comfy: Path, url: str, checkpoint: str) -> list:
    failures: list = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        server = Server(url, session)
        base = await settled(server, await server.queue(base_nodes(checkpoint)), "16")
        before = image_digest(comfy, base, "16")
        line(base["status"] == "success" and before, f"base image: {base['status']} in {base['seconds']:.1f} s, "
             f"pixels {before} {base['error']}", failures)
        cases = [("NaN loss (unet_lr = 1e30)", train_nodes(checkpoint, settings="unet_lr = 1e30\n"), "Loss became"),
                 ("empty dataset folder", train_nodes(checkpoint, folder=EMPTY), "LT_DatasetLoader")]
        for what, graph, expect in cases:
            result = await server.queue(graph)
            message = result["error"]
            one_line = "\n" not in message and "Traceback" not in message
            line(result["status"] == "error" and expect in message and one_line and await alive(session, url),
                 f"{what}: prompt ended '{result['status']}', message: {message!r}; server answers", failures)
        again = await settled(server, await server.queue(base_nodes(checkpoint)), "16")
        after = image_digest(comfy, again, "16")
        rerun = "14" not in cached_nodes(again)
        line(after == before and rerun, f"base image after the failures (KSampler {'re-run' if rerun else 'CACHED'} on "
             f"the same loaded MODEL): {after} (before {before}): "
             f"{'bit-identical' if after == before else 'DIFFERENT'}", failures)
        fixed = await settled(server, await server.queue(train_nodes(checkpoint)), "23")
        lora = image_digest(comfy, fixed, "23")
        line(fixed["status"] == "success" and lora and lora != before,
             f"fixed graph queued again (no restart): {fixed['status']} in {fixed['seconds']:.1f} s, LoRA image {lora} "
             f"{fixed['error']}", failures)
        broken = await server.queue(broken_loader_nodes())  # last: its prompt has no CheckpointLoaderSimple
        line(broken["status"] == "error" and "config.json" in broken["error"] and "\n" not in broken["error"]
             and await alive(session, url), f"model folder without unet/config.json: prompt ended "
             f"'{broken['status']}', message: {broken['error']!r}; server answers", failures)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--checkpoint", default="anything-v5.safetensors")
    args = parser.parse_args()
    prepare_failures(args.comfyui)
    failures = asyncio.run(check(args.comfyui, f"http://127.0.0.1:{args.port}", args.checkpoint))
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
