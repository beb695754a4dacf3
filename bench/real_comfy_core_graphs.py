"""The bundled SD1.5 / SDXL train-then-generate workflows in a real ComfyUI on CPU (not CI).

    python bench/real_comfy_core_graphs.py --url http://127.0.0.1:8188 [WORKFLOW.json ...]
    python bench/real_comfy_core_graphs.py --comfy COMFYUI_DIR [--python PY] [--port N] [--server-arg=...]

Nothing is fetched: COMFYUI_DIR is a ComfyUI checkout (v0.3.64 era) with this pack in custom_nodes/,
the checkpoints the workflows name (anything-v5.safetensors = SD1.5, sd_xl_base_1.0.safetensors =
SDXL; random full-size weights do) in models/checkpoints, a WD14 tagger in models/wd14_tagger/ and a
dataset in input/lora_dataset/. Run it with ComfyUI's own Python (aiohttp) plus playwright and a
Chromium (--chromium): the real frontend turns each workflow into the prompt it would queue.
With --comfy the server is started here (``--server-arg`` passes e.g. ``--base-directory=DIR``) and
stopped at the end; with --url it is one already running.

Per workflow, shrunk for a CPU (256 px, LoRA Train 10 steps through a Training Options node,
KSampler 4 steps), in one server:
  1. the base graph (the workflow's strength-0 branch without LoRA Apply: Load Checkpoint ->
     CLIPTextEncode -> KSampler -> VAEDecode) before training;
  2. the workflow: success or the node's error, and the images written;
  3. the base graph again: KSampler re-run (not cached) on the trained-on MODEL gives the
     bit-identical image; LoRA Apply at strength 0 gives the base image, at strength 1 another.

Peak memory of the same graphs: bench/real_comfy_rss.py.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = [ROOT / "workflows" / "sd15_train_then_generate.json", ROOT / "workflows" / "sdxl_train_then_generate.json"]
SIZE, TRAIN_STEPS, SAMPLE_STEPS = 256, 10, 4
TRAIN_OPTIONS = f"max_train_steps = {TRAIN_STEPS}\n"
PREFIX = "lt_bench_core"
GB = 1e9


# ---- server -------------------------------------------------------------------------------------

class Server:
    """A ComfyUI server started here (stopped on exit), or one already running at ``url``."""

    def __init__(self, url=None, comfy=None, python=None, port=None, extra=()):
        self.url, self.comfy, self.python, self.port, self.extra = url, comfy, python, port, list(extra)
        self.proc = self.log = None

    def __enter__(self):
        if self.url:
            return self
        if not self.port:  # a free one: another run (or ComfyUI) may hold the usual ports
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="lt_core_")) / "server.log"
        cmd = [self.python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               *self.extra]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.comfy, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ComfyUI exited at start-up ({self.proc.returncode}); log: {self.log}")
            try:
                asyncio.run(get_json(self.url, "/object_info/LT_LoraTrain"))
                return self
            except (aiohttp.ClientError, OSError):
                time.sleep(1)
        raise SystemExit(f"ComfyUI did not answer on {self.url} in 300 s; log: {self.log}")

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""


async def get_json(url, path):
    async with aiohttp.ClientSession() as s, s.get(url + path, timeout=aiohttp.ClientTimeout(total=60)) as r:
        r.raise_for_status()
        return await r.json()


def proc_status(pid) -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


# ---- queueing -----------------------------------------------------------------------------------

class Run:
    def __init__(self, prompt_id, status, error, outputs, cached, executed, samples, elapsed):
        self.prompt_id, self.status, self.error, self.outputs = prompt_id, status, error, outputs
        self.cached, self.executed, self.samples, self.elapsed = cached, executed, samples, elapsed

    @property
    def ok(self):
        return self.status == "success"


async def queue(url, prompt, pid=None, limit=3600, interval=0.2) -> Run:
    """POST the prompt, follow it on the websocket to its end; with ``pid``, sample the server's
    memory while each node runs. Returns its history entry's outcome."""
    client = uuid.uuid4().hex
    samples, state = [], {"node": None, "done": False}
    start = time.time()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(url.replace("http", "ws", 1) + f"/ws?clientId={client}", max_msg_size=0) as ws:
            async with s.post(url + "/prompt", json={"prompt": prompt, "client_id": client}) as r:
                body = await r.json()
                if r.status != 200:
                    return Run(None, "rejected", json.dumps(body)[:600], {}, [], [], [], 0.0)
            prompt_id = body["prompt_id"]

            async def sample():
                while not state["done"]:
                    if pid:
                        samples.append((time.time() - start, state["node"], proc_status(pid)))
                    await asyncio.sleep(interval)

            sampler = asyncio.create_task(sample())
            try:
                while time.time() - start < limit:
                    try:
                        msg = await ws.receive(timeout=5)
                    except asyncio.TimeoutError:
                        if prompt_id in await (await s.get(f"{url}/history/{prompt_id}")).json():
                            break
                        continue
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            break
                        continue
                    data = json.loads(msg.data)
                    info = data.get("data") or {}
                    if info.get("prompt_id") != prompt_id:
                        continue
                    if data["type"] == "executing":
                        state["node"] = info.get("node")
                        if info.get("node") is None:
                            break
                    elif data["type"] in ("execution_error", "execution_interrupted", "execution_success"):
                        break
            finally:
                state["done"] = True
                await sampler
        for _ in range(60):  # the history entry lands just after the last message
            history = await (await s.get(f"{url}/history/{prompt_id}")).json()
            if prompt_id in history:
                break
            await asyncio.sleep(1)
        else:
            return Run(prompt_id, "timeout", "no history entry", {}, [], [], samples, time.time() - start)
    entry = history[prompt_id]
    status = entry.get("status", {})
    messages = status.get("messages", [])
    cached = [n for kind, m in messages if kind == "execution_cached" for n in m.get("nodes", [])]
    errors = [m for kind, m in messages if kind == "execution_error"]
    error = ""
    if errors:
        e = errors[0]
        error = f"{e.get('node_type')} (node {e.get('node_id')}): {e.get('exception_type', '')}: " \
                f"{e.get('exception_message', '').strip()}"
    executed = [n for n in prompt if n not in cached]
    return Run(prompt_id, status.get("status_str", "?"), error, entry.get("outputs", {}), cached, executed,
               samples, time.time() - start)


async def image(url, info):
    """The pixels of an image the server wrote (``{filename, subfolder, type}``)."""
    import numpy as np
    from PIL import Image

    async with aiohttp.ClientSession() as s, s.get(url + "/view", params=info) as r:
        r.raise_for_status()
        return np.asarray(Image.open(io.BytesIO(await r.read())).convert("RGB"), dtype=np.int16)


# ---- graphs -------------------------------------------------------------------------------------

def frontend_prompts(url, files, chromium):
    """Each workflow as the real frontend queues it (app.graphToPrompt)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SystemExit("playwright is needed to convert the workflows with the real frontend: pip install "
                         "playwright into this Python (a system Chromium is used, see --chromium).") from None
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update"]
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(url + "/", wait_until="networkidle")
        page.wait_for_function("() => (window.app && window.app.graph) || (window.comfyAPI && window.comfyAPI.app)",
                               timeout=60000)
        for f in files:
            out[f] = page.evaluate("""async (wf) => {
                const app = window.app || window.comfyAPI.app.app;
                await app.loadGraphData(wf);
                return (await app.graphToPrompt()).output;
            }""", json.loads(Path(f).read_text(encoding="utf-8")))
        browser.close()
    return out


def links_to(prompt, node_id):
    return [(nid, name) for nid, n in prompt.items() for name, v in n["inputs"].items()
            if isinstance(v, list) and str(v[0]) == str(node_id)]


def new_id(prompt):
    return str(max(int(k) for k in prompt if k.isdigit()) + 1)


def shrink(prompt, tag):
    """CPU sizes, 10 training steps, files under names of this bench; a preview of each branch."""
    for node in prompt.values():
        kind, inp = node["class_type"], node["inputs"]
        if kind == "LT_SmartCrop":
            inp.update(size="custom", custom_width=SIZE, custom_height=SIZE)
        elif kind == "LT_LoraTrain":
            inp.update(resolution=str(SIZE), train_batch_size=1, mixed_precision="no", sample_prompt="",
                       output_name=f"{PREFIX}_{tag}")
        elif kind == "LT_LoraSave":
            inp.update(name=f"{PREFIX}_{tag}", overwrite=True)
        elif kind == "EmptyLatentImage":
            inp.update(width=SIZE, height=SIZE)
        elif kind == "KSampler":
            inp.update(steps=SAMPLE_STEPS)
        elif kind == "SaveImage":
            inp["filename_prefix"] = f"{PREFIX}/{tag}"
    for train in [k for k, n in prompt.items() if n["class_type"] == "LT_LoraTrain"]:
        opts = new_id(prompt)
        prompt[opts] = {"class_type": "LT_TrainingOptions", "inputs": {"settings": TRAIN_OPTIONS}}
        prompt[train]["inputs"]["options"] = [opts, 0]
    branches = {}
    for apply_id in [k for k, n in prompt.items() if n["class_type"] == "LT_LoraApply"]:
        strength = float(prompt[apply_id]["inputs"]["strength_model"])
        sampler = next(n for n, name in links_to(prompt, apply_id) if prompt[n]["class_type"] == "KSampler")
        decode = next(n for n, _ in links_to(prompt, sampler) if prompt[n]["class_type"] == "VAEDecode")
        preview = new_id(prompt)
        prompt[preview] = {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}
        branches[strength] = {"apply": apply_id, "sampler": sampler, "decode": decode, "preview": preview}
    return prompt, branches


def ancestors(prompt, node_id, seen=None):
    seen = set() if seen is None else seen
    seen.add(node_id)
    for v in prompt[node_id]["inputs"].values():
        if isinstance(v, list) and str(v[0]) not in seen:
            ancestors(prompt, str(v[0]), seen)
    return seen


def base_graph(prompt, branch):
    """The branch's KSampler graph on the bare MODEL/CLIP: LoRA Apply's outputs replaced by its inputs."""
    keep = ancestors(prompt, branch["preview"])
    apply = prompt[branch["apply"]]["inputs"]
    out = {}
    for nid in keep:
        node = copy.deepcopy(prompt[nid])
        if node["class_type"].startswith("LT_"):
            continue
        for name, v in node["inputs"].items():
            if isinstance(v, list) and str(v[0]) == branch["apply"]:
                node["inputs"][name] = list(apply["model" if v[1] == 0 else "clip"])
        out[nid] = node
    assert not any(n["class_type"].startswith("LT_") for nid in out for n in [out[nid]])
    return out


def written(run):
    return [f"{'output' if i['type'] == 'output' else i['type']}/{i['subfolder'] + '/' if i['subfolder'] else ''}"
            f"{i['filename']}" for o in run.outputs.values() for i in o.get("images", []) if i["type"] == "output"]


def diff(a, b):
    if a.shape != b.shape:
        return f"shapes {a.shape} vs {b.shape}"
    return int(abs(a - b).max())


async def check_workflow(url, name, prompt):
    tag = name.split("_")[0]
    prompt, branches = shrink(prompt, tag)
    if set(branches) != {0.0, 1.0}:
        print(f"{name}: FAIL the workflow has no LoRA Apply pair at strength 0 and 1 ({sorted(branches)})")
        return False
    base = base_graph(prompt, branches[0.0])
    sampler = branches[0.0]["sampler"]
    lines, ok = [], True
    before = await queue(url, base)
    if not before.ok:
        print(f"{name}: base graph before training: {before.status}: {before.error}")
        return False
    b0 = await image(url, before.outputs[branches[0.0]["preview"]]["images"][0])
    run = await queue(url, prompt)
    if not run.ok:
        print(f"{name}: FAIL {run.status}: {run.error}")
        return False
    print(f"{name}: success in {run.elapsed:.0f} s ({len(prompt)} nodes); images written: {', '.join(written(run))}")
    after = await queue(url, base)
    if not after.ok:
        print(f"  base graph after training: FAIL {after.status}: {after.error}")
        return False
    b1 = await image(url, after.outputs[branches[0.0]["preview"]]["images"][0])
    s0 = await image(url, run.outputs[branches[0.0]["preview"]]["images"][0])
    s1 = await image(url, run.outputs[branches[1.0]["preview"]]["images"][0])
    rerun = sampler in after.executed
    same = diff(b0, b1)
    ok &= rerun and same == 0
    lines.append(f"  (1) base MODEL after training, KSampler {'re-run' if rerun else 'CACHED (no evidence)'}: "
                 f"max pixel difference to before = {same} -> {'bit-identical' if same == 0 else 'DIFFERENT'}")
    d0, d1 = diff(s0, b0), diff(s1, b0)
    ok &= d0 == 0 and not (isinstance(d1, int) and d1 == 0)
    lines.append(f"  (2) LoRA Apply strength 0 vs base: max difference {d0} -> {'equal' if d0 == 0 else 'DIFFERENT'};"
                 f" strength 1 vs base: max difference {d1} -> {'differs' if d1 != 0 else 'EQUAL'}")
    print("\n".join(lines))
    print(f"  {name}: {'all checks hold' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workflows", nargs="*", default=[str(p) for p in WORKFLOWS])
    ap.add_argument("--url", help="a running ComfyUI with this pack (else --comfy starts one)")
    ap.add_argument("--comfy", help="the ComfyUI checkout to start (main.py there)")
    ap.add_argument("--python", help="its Python (default: this one)")
    ap.add_argument("--port", type=int, help="--comfy: the port to start it on (default: a free one)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="passed to main.py, e.g. --server-arg=--base-directory=DIR")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    if not args.url and not args.comfy:
        ap.error("give --url of a running ComfyUI or --comfy to start one")
    with Server(args.url, args.comfy, args.python, args.port, args.server_arg) as server:
        prompts = frontend_prompts(server.url, args.workflows, args.chromium)
        results = [asyncio.run(check_workflow(server.url, Path(f).name, prompts[f])) for f in args.workflows]
    print(f"workflows={len(results)} all_checks_hold={sum(results)}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
