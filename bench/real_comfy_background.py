"""Background training and the Training sidebar in a real ComfyUI and a real browser.

    python bench/real_comfy_background.py COMFYUI_DIR [--port 8199] [--shots docs/images]

COMFYUI_DIR is a ComfyUI checkout with this pack in custom_nodes/ and its server listening on
--port, on CPU (nothing is fetched or started here). Run it with a Python that has Playwright
(ComfyUI's venv) and Debian's /usr/bin/chromium. A tiny SD1.5 model (models/diffusers/
LT-bench-TinySD15) and a painted dataset (input/lt_bench_stars) are written first.

In the page, as a user would: a graph Kolors/SDXL Loader -> Dataset Loader -> LoRA Train is built
and queued with the frontend's own Queue (app.queuePrompt):

1. run_in = "this graph": the LoRA Train node before, during and after its run (screenshots): the
   live chart keeps its height, the headless commands sit behind one folded line, nothing
   overflows the node.
2. run_in = "background": the prompt ends at once (ComfyUI's /queue is empty while the run's
   steps rise); the Training tab shows rising step counts and a loss curve; its Stop stops the
   run (state saved); its Resume finishes it; the LoRA appears in models/loras, a toast says so
   and LoraLoader's list has the file.

One line per check; screenshots in --shots; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "LT-bench-TinySD15"
DATASET = "lt_bench_stars"
HERE, AWAY = "lt_bench_graph_run", "lt_bench_background"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]

BUILD_GRAPH = """async ([model, dataset, name, runIn, epochs]) => {
  const app = window.app, LG = window.LiteGraph;
  app.graph.clear();
  const add = (type, pos) => { const n = LG.createNode(type); n.pos = pos; app.graph.add(n); return n; };
  const set = (node, values) => { for (const [k, v] of Object.entries(values)) {
    const w = node.widgets.find((x) => x.name === k); if (!w) throw new Error(node.type + " has no " + k); w.value = v; } };
  const loader = add("LT_KolorsSDXLLoader", [40, 60]);
  set(loader, { model: "diffusers/" + model, dtype: "fp32" });
  const data = add("LT_DatasetLoader", [40, 300]);
  set(data, { folder: dataset, trigger_word: "ltdemo" });
  const train = add("LT_LoraTrain", [460, 60]);
  set(train, { output_name: name, resolution: "64", network_dim: 4, network_alpha: 4, learning_rate: 1e-3,
               max_train_epochs: epochs, train_batch_size: 1, mixed_precision: "no", gradient_checkpointing: false,
               run_in: runIn });
  loader.connect(0, train, train.findInputSlot("pipeline"));
  data.connect(0, train, train.findInputSlot("dataset"));
  app.canvas.ds.offset = [0, 0];
  app.canvas.ds.scale = 1;
  app.graph.setDirtyCanvas(true, true);
  return train.id;
}"""

NODE_LAYOUT = """(id) => {
  const node = window.app.graph.getNodeById(id);
  const ui = node.__lt;
  const root = ui.canvas.parentElement;
  return { chart: ui.canvas.clientHeight, overflow: root.scrollHeight - root.clientHeight,
           folded: ui.details.style.display !== "none" && !ui.details.open,
           summary: ui.summary.textContent, points: ui.points.length, size: node.size };
}"""


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def prepare(comfy: Path) -> None:
    from trainer.demo import paint_dataset
    from trainer.tiny.build import write_tiny_model

    folder = comfy / "models" / "diffusers" / MODEL
    if not (folder / "unet").is_dir():
        write_tiny_model("sd15", folder)
    if not (comfy / "input" / DATASET).is_dir():
        paint_dataset(comfy / "input" / DATASET)
    for name in (HERE, AWAY):
        shutil.rmtree(comfy / "output" / "lora_trainer" / name, ignore_errors=True)
        for old in (comfy / "models" / "loras").glob(f"{name}*.safetensors"):
            old.unlink()


def wait(check, timeout: float, every: float = 0.5):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--shots", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    prepare(args.comfyui)
    args.shots.mkdir(parents=True, exist_ok=True)
    failures = []

    def check(ok, text):
        print(("ok   " if ok else "FAIL ") + text)
        failures.extend([] if ok else [text])

    def run(name):
        return next((r for r in get(f"{url}/lora_trainer/runs")["runs"] if r["id"] == name), None)

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(f"{e}: {e.stack}"))
        page.goto(url, wait_until="networkidle")
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=60000)
        page.wait_for_timeout(1500)

        # 1. this graph: the node's layout before, during, after
        train_id = page.evaluate(BUILD_GRAPH, [MODEL, DATASET, HERE, "this graph", 12])
        page.wait_for_timeout(500)
        node_clip = {"x": 440, "y": 40, "width": 620, "height": 850}
        page.screenshot(path=str(args.shots / "lora_train_before.png"), clip=node_clip)
        before = page.evaluate(NODE_LAYOUT, train_id)
        page.evaluate("() => window.app.queuePrompt(0)")
        live = wait(lambda: page.evaluate(NODE_LAYOUT, train_id)["points"] >= 30, 180)
        page.wait_for_timeout(300)
        page.screenshot(path=str(args.shots / "lora_train_during.png"), clip=node_clip)
        during = page.evaluate(NODE_LAYOUT, train_id)
        check(bool(live), f"live chart during the run: {during['points']} points, chart {during['chart']} px high")
        done = wait(lambda: (run(HERE) or {}).get("state") in ("done", "failed", "stopped"), 600)
        page.wait_for_timeout(1500)
        after = page.evaluate(NODE_LAYOUT, train_id)
        page.screenshot(path=str(args.shots / "lora_train_after.png"), clip=node_clip)
        check(done and run(HERE)["state"] == "done" and run(HERE)["mode"] == "graph",
              f"graph run listed as a run: {run(HERE) and run(HERE)['state']}")
        check(after["chart"] >= before["chart"] - 2 and after["chart"] >= 140,
              f"chart height before/during/after: {before['chart']} / {during['chart']} / {after['chart']} px")
        check(after["overflow"] <= 1 and after["folded"], f"after the run nothing overflows the node "
              f"(overflow {after['overflow']} px), the headless commands are folded behind: {after['summary'][:60]!r}")
        check(after["points"] == 480, f"the final chart has every step: {after['points']} points")

        # 2. background: the queue is free, the panel shows the run, Stop, Resume, the LoRA appears
        page.evaluate(BUILD_GRAPH, [MODEL, DATASET, AWAY, "background", 25])  # 1000 steps
        page.evaluate("() => window.app.queuePrompt(0)")
        started = wait(lambda: (run(AWAY) or {}).get("step", 0) >= 5, 180)
        queue = get(f"{url}/queue")
        step1 = run(AWAY)["step"]
        check(bool(started) and not queue["queue_running"] and not queue["queue_pending"],
              f"queue empty while the background run trains (step {step1}): running {len(queue['queue_running'])}, "
              f"pending {len(queue['queue_pending'])}")
        page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleSidebarTab.lora-trainer-runs')")
        card = page.locator(f".lt-training-panel [data-run='{AWAY}']")
        card.wait_for(timeout=20000)
        text1 = card.locator(".lt-run-steps").inner_text()
        page.wait_for_timeout(4000)
        text2 = card.locator(".lt-run-steps").inner_text()
        n1, n2 = (int(t.split()[1]) for t in (text1, text2))
        check(n2 > n1 > 0, f"panel step count rises: {text1.split(' · ')[0]} -> {text2.split(' · ')[0]}")
        ink = page.evaluate("""(id) => { const c = document.querySelector(`[data-run='${id}'] .lt-run-curve`);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] > 60 || d[i + 1] > 60 || d[i + 2] > 60) n++; return n; }""", AWAY)
        check(ink > 100, f"panel loss curve drawn: {ink} lit pixels")
        page.screenshot(path=str(args.shots / "training_panel_running.png"))

        card.get_by_role("button", name="Stop").click()
        stopped = wait(lambda: (run(AWAY) or {}).get("state") == "stopped", 120)
        page.wait_for_timeout(2500)
        badge = card.locator(".lt-run-state").inner_text()
        check(bool(stopped) and run(AWAY)["resumable"] and badge == "stopped",
              f"Stop: state {run(AWAY)['state']} at step {run(AWAY)['step']}, resumable {run(AWAY)['resumable']}, "
              f"badge {badge!r}")
        page.screenshot(path=str(args.shots / "training_panel_stopped.png"))

        card.get_by_role("button", name="Resume").click()
        finished = wait(lambda: (run(AWAY) or {}).get("state") in ("done", "failed"), 900)
        status = run(AWAY)
        check(bool(finished) and status["state"] == "done" and status["step"] == 1000,
              f"Resume finishes the run: {status['state']} at step {status['step']} ({status.get('error')})")
        lora = Path(status.get("lora") or "")
        check(lora.is_file() and lora.parent == args.comfyui / "models" / "loras", f"LoRA in models/loras: {lora}")
        toast = wait(lambda: page.locator(".p-toast-message", has_text="is trained").count(), 20)
        check(bool(toast), "a toast says the LoRA is trained")
        page.screenshot(path=str(args.shots / "training_panel_done.png"))
        listed = page.evaluate("""(name) => { const n = window.LiteGraph.createNode('LoraLoader');
            return n.widgets.find((w) => w.name === 'lora_name').options.values.includes(name); }""", lora.name)
        check(listed, f"LoraLoader's list has {lora.name}")
        # the frontend's own settings code throws one at start-up in headless Chromium: only ours count
        ours = [e for e in errors if "/extensions/" in e]
        check(not ours, f"no page errors from the pack's scripts ({ours[:2]}; {len(errors) - len(ours)} from the frontend)")
        browser.close()
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
