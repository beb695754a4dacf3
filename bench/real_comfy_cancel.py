"""Cancel and resume in a real ComfyUI, and a symlinked checkpoint through the loader node.

    python bench/real_comfy_cancel.py COMFYUI_DIR [--python PY] [--port 8199] [--epochs 10]

COMFYUI_DIR is a ComfyUI checkout with this pack in custom_nodes/ (nothing is fetched here). Run
it with a Python that has aiohttp and the pack's requirements (ComfyUI's own venv has both); the
server is used when it already listens on --port, else started with --python (default: this
Python) and stopped at the end. The script writes a tiny Kolors model (trainer.tiny) into a
store beside models/ and symlinks it into models/diffusers, a random-weight full-size SD1.5 single file
(bf16, 2 GB, trainer.tiny.full_size: ComfyUI's CLIP tokenizer needs the real vocabulary) symlinked
into models/checkpoints under a hub-cache-like target name, and a painted dataset into input/. Then:

1. a 1-epoch warm-up, then an uninterrupted LoRA Train run (the reference LoRA and its time);
2. the same graph under another name, POST /interrupt at half the steps (read from the
   progress events on the websocket), as the Cancel button does;
3. the <name>-state folder must exist; the graph is queued again: it must report only the
   remaining steps, and its LoRA must equal the reference (max abs difference);
4. Loader (the symlinked single file) -> Sampler Preview runs.

One line per check, with numbers; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KOLORS = "LT-bench-TinyKolors"  # symlinked folder in models/diffusers
# symlinked file in models/checkpoints; a new name each run, so ComfyUI's cache cannot skip the loader
SD15 = f"LT-bench-linked-sd15-{int(time.time())}.safetensors"
DATASET = "lt_bench_cancel"  # input/<DATASET>/10_ltdemo
WARM, WHOLE, PARTS = "lt_bench_warmup", "lt_bench_whole", "lt_bench_cancel"


def prepare(comfy: Path) -> None:
    """Models (behind symlinks, as users who share models between UIs have them) and the dataset."""
    from trainer.demo import paint_dataset
    from trainer.tiny.build import write_tiny_model
    from trainer.tiny.full_size import write_full_size_checkpoint

    store = comfy / "lt_bench_store"  # outside models/: the links point here
    if not (store / "TinyKolors" / "unet").is_dir():
        write_tiny_model("kolors", store / "TinyKolors")
    blob = store / "blobs" / "5d41402abc4b"  # a hub-cache-like name, no .safetensors
    if not blob.is_file():  # full-size shapes: ComfyUI's own CLIP tokenizer has the real 49408-token vocab
        blob.parent.mkdir(parents=True, exist_ok=True)
        write_full_size_checkpoint("sd15", store / "sd15.safetensors").rename(blob)
    for old in (comfy / "models" / "checkpoints").glob("LT-bench-linked-sd15*.safetensors"):
        old.unlink()
    for link, target in ((comfy / "models" / "diffusers" / KOLORS, store / "TinyKolors"),
                         (comfy / "models" / "checkpoints" / SD15, blob)):
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():  # a copy left by an earlier check under the bench's own name
            shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=target.is_dir())
    data = comfy / "input" / DATASET
    if not data.is_dir():
        paint_dataset(data)
    for name in (WARM, WHOLE, PARTS):  # every run starts from nothing
        shutil.rmtree(comfy / "output" / "lora_trainer" / name, ignore_errors=True)
        for old in (comfy / "models" / "loras").glob(f"{name}*.safetensors"):
            old.unlink()


def train_graph(name: str, epochs: int) -> dict:
    return {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": f"diffusers/{KOLORS}", "family": "auto",
                                                               "dtype": "fp32"}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": DATASET, "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "3": {"class_type": "LT_LoraTrain", "inputs": {
            "pipeline": ["1", 0], "dataset": ["2", 0], "preset": "none", "output_name": name, "resolution": "64",
            "network_dim": 4, "network_alpha": 4.0, "learning_rate": 1e-3, "max_train_epochs": epochs,
            "train_batch_size": 4, "mixed_precision": "no", "gradient_checkpointing": False, "seed": 7}},
        "4": {"class_type": "LT_LoraSave", "inputs": {"lora": ["3", 0], "name": name, "precision": "fp32",
                                                       "overwrite": True, "format": "kohya"}},
    }


def preview_graph() -> dict:
    return {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": f"checkpoints/{SD15}", "family": "auto",
                                                               "dtype": "bf16"}},
        "2": {"class_type": "LT_SamplerPreview", "inputs": {
            "pipeline": ["1", 0], "prompt": "ltdemo, a star", "negative": "", "seed": 1, "steps": 2, "cfg": 5.0,
            "width": 64, "height": 64, "sampler": "euler", "lora_strength": 1.0}},
    }


class Server:
    """A client of one ComfyUI server: /prompt, /interrupt, /history and the websocket's events."""

    def __init__(self, url: str, session: aiohttp.ClientSession):
        self.url, self.session, self.client = url, session, uuid.uuid4().hex

    async def queue(self, prompt: dict, on_progress=None, limit: float = 1800) -> dict:
        """Queue ``prompt``, follow it to its end. Returns status, seconds, and the progress values
        of the LoRA Train node; ``on_progress(value, max)`` is awaited for each of them."""
        async with self.session.ws_connect(f"{self.url.replace('http', 'ws', 1)}/ws?clientId={self.client}") as ws:
            async with self.session.post(f"{self.url}/prompt", json={"prompt": prompt, "client_id": self.client}) as r:
                body = await r.json()
                if r.status != 200:
                    return {"status": "rejected", "error": json.dumps(body)[:400], "started": time.monotonic(),
                            "seconds": 0.0, "steps": [], "times": [], "setup": 0.0, "training": 0.0, "history": {}}
            prompt_id, started, steps, times, status = body["prompt_id"], time.monotonic(), [], [], None
            while status is None and time.monotonic() - started < limit:
                try:
                    msg = await ws.receive(timeout=5)
                except asyncio.TimeoutError:
                    status = await self.finished(prompt_id)
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(msg.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if event["type"] == "progress" and self._is_train(prompt, data):
                    steps.append(int(data["value"]))
                    times.append(time.monotonic())
                    if on_progress:
                        await on_progress(int(data["value"]), int(data["max"]))
                elif event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    status = await self.finished(prompt_id) or event["type"].removeprefix("execution_")
                elif event["type"] == "executing" and data.get("node") is None:
                    status = await self.finished(prompt_id)
            seconds = time.monotonic() - started
        history = await self.history(prompt_id)
        # time to the first step (loading, caching) and from the first step to the last
        setup = times[0] - started if times else seconds
        return {"status": status or "timeout", "prompt_id": prompt_id, "started": started, "seconds": seconds,
                "steps": steps, "times": times,
                "setup": setup, "training": times[-1] - times[0] if times else 0.0, "history": history,
                "error": error_text(history)}

    @staticmethod
    def _is_train(prompt: dict, data: dict) -> bool:
        node = prompt.get(str(data.get("node")), {})
        return node.get("class_type") == "LT_LoraTrain"

    async def history(self, prompt_id: str) -> dict:
        async with self.session.get(f"{self.url}/history/{prompt_id}") as r:
            return (await r.json()).get(prompt_id, {})

    async def finished(self, prompt_id: str) -> str | None:
        status = (await self.history(prompt_id)).get("status", {})
        if not status.get("completed") and status.get("status_str") != "error":
            return None
        if any(m[0] == "execution_interrupted" for m in status.get("messages", [])):
            return "interrupted"
        return status.get("status_str")

    async def interrupt(self) -> None:
        async with self.session.post(f"{self.url}/interrupt", json={}) as r:
            r.raise_for_status()


def error_text(history: dict) -> str:
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message', '')}".strip()[:400]
    return ""


def max_abs_diff(a: Path, b: Path) -> tuple[float, int]:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return float("inf"), len(ta.keys() ^ tb.keys())
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta), len(ta)


def line(ok: bool, text: str, failures: list) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)
    if not ok:
        failures.append(text)


async def check(comfy: Path, url: str, epochs: int) -> list:
    failures: list = []
    loras = comfy / "models" / "loras"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        server = Server(url, session)
        async with session.get(f"{url}/object_info/LT_KolorsSDXLLoader") as r:
            menu = (await r.json())["LT_KolorsSDXLLoader"]["input"]["required"]["model"][0]
        line(f"diffusers/{KOLORS}" in menu and f"checkpoints/{SD15}" in menu,
             f"loader menu lists the symlinked folder and file: {[m for m in menu if 'LT-bench' in m]}", failures)

        warm = await server.queue(train_graph(WARM, 1))  # loading and first-call costs out of the timings
        line(warm["status"] == "success", f"warm-up run (1 epoch): {warm['status']} in {warm['seconds']:.1f} s "
             f"{warm['error']}", failures)
        whole = await server.queue(train_graph(WHOLE, epochs))
        total = max(whole["steps"], default=0)
        line(whole["status"] == "success", f"uninterrupted run: {whole['status']} in {whole['seconds']:.1f} s "
             f"({whole['setup']:.1f} s to the first step, {whole['training']:.1f} s from the first step to the last), "
             f"{len(whole['steps'])} progress events, {total} steps {whole['error']}", failures)

        gaps = sorted(b - a for a, b in zip(whole["times"], whole["times"][1:])) or [1.0]
        step_seconds = gaps[len(gaps) // 2]
        pressed = {}

        async def cancel_halfway(value: int, most: int) -> None:
            # a user's click lands within a step, not just after the bar moved: then ComfyUI's
            # progress hook raises at the next update, before the loop's own check
            if not pressed and value >= most // 2:
                pressed.update(value=value)
                await asyncio.sleep(step_seconds / 2)
                await server.interrupt()
                pressed.update(at=time.monotonic())

        first = await server.queue(train_graph(PARTS, epochs), on_progress=cancel_halfway)
        ended = first["started"] + first["seconds"] - pressed.get("at", 0)
        last = max(first["steps"], default=0)
        line(first["status"] == "interrupted", f"Cancel (POST /interrupt) {step_seconds / 2:.2f} s into step "
             f"{pressed.get('value', 0) + 1}/{total}: prompt ended '{first['status']}' after {first['seconds']:.1f} s "
             f"({first['setup']:.1f} s to the first step, {ended:.2f} s after the click), "
             f"last step reported {last} {first['error']}", failures)
        progress = comfy / "output" / "lora_trainer" / PARTS / f"{PARTS}-state" / "progress.json"
        saved = json.loads(progress.read_text(encoding="utf-8"))["step"] if progress.is_file() else None
        way = ("the progress hook's exception (step done, not reported)" if saved == last + 1
               else "the loop's should_stop check" if saved == last else "?")
        line(saved is not None, f"state folder {progress.parent.name}: "
             + (f"exists, saved at step {saved}, interrupt arrived through {way}" if saved is not None
                else "MISSING"), failures)

        again = await server.queue(train_graph(PARTS, epochs))
        steps = again["steps"]
        expected = list(range((saved or 0) + 1, total + 1))
        line(again["status"] == "success" and saved is not None and steps == expected,
             f"queued again: {again['status']} in {again['seconds']:.1f} s ({again['setup']:.1f} s to its first step, "
             f"{again['training']:.1f} s of steps; uninterrupted {whole['seconds']:.1f} s), "
             f"{len(steps)} steps reported ({steps[:1]}..{steps[-1:]}), expected {len(expected)} "
             f"({saved}+1..{total}) {again['error']}", failures)
        if (loras / f"{WHOLE}.safetensors").is_file() and (loras / f"{PARTS}.safetensors").is_file():
            diff, count = max_abs_diff(loras / f"{WHOLE}.safetensors", loras / f"{PARTS}.safetensors")
            line(diff <= 1e-6, f"resumed LoRA vs uninterrupted: max abs diff {diff:.3g} over {count} tensors", failures)
        else:
            line(False, "resumed LoRA vs uninterrupted: a LoRA file is missing", failures)

        preview = await server.queue(preview_graph(), limit=600)
        images = sum(len(o.get("images", [])) for o in preview["history"].get("outputs", {}).values())
        line(preview["status"] == "success" and images == 1, f"symlinked checkpoint checkpoints/{SD15} -> Loader -> "
             f"Sampler Preview: {preview['status']} in {preview['seconds']:.1f} s, {images} image(s) {preview['error']}",
             failures)
    return failures


async def reachable(url: str) -> bool:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"{url}/object_info/LT_LoraTrain") as r:
                return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui_dir", type=Path, help="a ComfyUI checkout with this pack in custom_nodes/")
    parser.add_argument("--python", default=sys.executable, help="ComfyUI's Python, to start the server")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--epochs", type=int, default=10, help="10 steps each (4 images x 10 repeats, batch 4)")
    args = parser.parse_args()
    comfy, url = args.comfyui_dir.resolve(), f"http://127.0.0.1:{args.port}"
    if not (comfy / "main.py").is_file():
        parser.error(f"{comfy} is not a ComfyUI checkout (no main.py)")
    prepare(comfy)
    process = None
    if not asyncio.run(reachable(url)):
        log = open(comfy / "lt_bench_server.log", "w")
        process = subprocess.Popen([args.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(args.port)],
                                   cwd=comfy, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not asyncio.run(reachable(url)):
            if process.poll() is not None or time.monotonic() > deadline:
                print(f"FAIL  server did not start: see {log.name}")
                return 1
            time.sleep(1)
        print(f"started ComfyUI on {url} (pid {process.pid}, log {log.name})")
    try:
        failures = asyncio.run(check(comfy, url, args.epochs))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    print(f"{'all checks passed' if not failures else f'{len(failures)} check(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
