// LoRA Trainer pack: the "Training" sidebar tab. Every run under output/lora_trainer/ (background
// runs and graph runs) with progress, ETA, loss curve, latest samples, the LoRA when done, and
// Stop / Resume / Log. Data: GET /lora_trainer/runs (nodes/runs_api.py), polled; nothing is kept
// in the page, so runs survive a reload and a server restart.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { chartContext } from "./chart_canvas.js";

const POLL_OPEN_MS = 1500; // while the tab is open
const POLL_CLOSED_MS = 5000; // otherwise: still watch for finished runs (toast, LoRA list)
const COLORS = { running: "#4caf50", queued: "#d4a017", done: "#4a90d9", stopped: "#999", failed: "#e05555" };

let panel = null; // the tab's element while it is shown
let known = null; // run id -> state at the last poll (null before the first one)

const el = (tag, css, text) => {
  const e = document.createElement(tag);
  if (css) e.style.cssText = css;
  if (text != null) e.textContent = text;
  return e;
};

function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function viewUrl(runId, relative) {
  const parts = relative.split("/");
  const filename = parts.pop();
  const subfolder = ["lora_trainer", runId, ...parts].join("/");
  const q = new URLSearchParams({ filename, subfolder, type: "output" });
  return api.apiURL(`/view?${q}`);
}

function drawCurve(canvas, history, total) {
  const { ctx, w, h } = chartContext(canvas, 260, 70);
  if (!history?.length) {
    ctx.fillStyle = "#777";
    ctx.textAlign = "center";
    ctx.fillText("loss curve: from the first step", w / 2, h / 2 + 4);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const [, loss, smooth] of history) { lo = Math.min(lo, loss, smooth); hi = Math.max(hi, loss, smooth); }
  if (hi - lo < 1e-12) { hi += 1e-6; lo -= 1e-6; }
  const last = Math.max(total || 0, history[history.length - 1][0], 1);
  const x = (s) => 4 + (s / last) * (w - 8), y = (v) => 4 + (1 - (v - lo) / (hi - lo)) * (h - 8);
  const line = (k, color, width) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    history.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[k])) : ctx.moveTo(x(p[0]), y(p[k]))));
    ctx.stroke();
  };
  line(1, "rgba(110,160,255,0.45)", 1);
  line(2, "#ffb347", 2);
}

async function post(runId, action) {
  const response = await api.fetchApi(`/lora_trainer/runs/${encodeURIComponent(runId)}/${action}`, { method: "POST" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    toast("error", `${action} ${runId}`, body.error || response.statusText);
  }
  poll();
}

async function openLog(runId, box) {
  if (box.style.display === "block") { box.style.display = "none"; return; }
  const response = await api.fetchApi(`/lora_trainer/runs/${encodeURIComponent(runId)}/log`);
  box.textContent = await response.text();
  box.style.display = "block";
  box.scrollTop = box.scrollHeight;
}

function button(text, onClick, title) {
  const b = el("button", "font:12px sans-serif;padding:2px 8px;cursor:pointer;border-radius:4px;"
    + "background:#333;color:#ddd;border:1px solid #555;", text);
  b.title = title;
  b.onclick = onClick;
  return b;
}

function card(run) {
  const box = el("div", "border:1px solid #444;border-radius:6px;padding:8px;margin:6px 0;background:#222;");
  box.dataset.run = run.id;
  const head = el("div", "display:flex;justify-content:space-between;align-items:center;gap:6px;");
  head.append(el("b", "font:13px sans-serif;color:#eee;word-break:break-all;", run.id));
  const badge = el("span", `font:11px sans-serif;padding:1px 6px;border-radius:8px;color:#111;background:${COLORS[run.state] || "#999"};`,
    run.stop_requested ? "stopping" : run.state);
  badge.className = "lt-run-state";
  head.append(badge);
  box.append(head);

  const pct = run.total ? Math.min(100, (100 * run.step) / run.total) : 0;
  const bar = el("div", "height:6px;background:#333;border-radius:3px;margin:6px 0 2px;overflow:hidden;");
  bar.append(el("div", `height:100%;width:${pct}%;background:${COLORS[run.state] || "#999"};`));
  box.append(bar);
  const facts = [`step ${run.step} / ${run.total || "?"}`];
  if (run.loss != null) facts.push(`loss ${Number(run.loss).toFixed(4)} (avg ${Number(run.smoothed).toFixed(4)})`);
  if (run.state === "running" && run.eta_seconds) facts.push(`ETA ${duration(run.eta_seconds)}`);
  facts.push(run.mode === "graph" ? "in a graph" : "background", run.device || "");
  const line = el("div", "font:11px sans-serif;color:#aaa;", facts.filter(Boolean).join(" · "));
  line.className = "lt-run-steps";
  box.append(line);
  if (run.waiting && run.state === "queued") box.append(el("div", "font:11px sans-serif;color:#d4a017;", run.waiting));

  const canvas = el("canvas", "width:100%;height:70px;margin-top:6px;border-radius:4px;display:block;");
  canvas.className = "lt-run-curve";
  box.append(canvas);
  requestAnimationFrame(() => drawCurve(canvas, run.history, run.total));

  if (run.samples?.length) {
    const row = el("div", "display:flex;gap:4px;margin-top:6px;flex-wrap:wrap;");
    for (const rel of run.samples.slice(-4)) {
      const img = el("img", "width:72px;height:72px;object-fit:cover;border-radius:4px;cursor:zoom-in;");
      img.src = viewUrl(run.id, rel) + `&t=${Math.round(run.updated_at || 0)}`;
      img.title = rel;
      img.onclick = () => window.open(img.src, "_blank");
      row.append(img);
    }
    box.append(row);
  }
  if (run.state === "done" && run.lora) box.append(el("div", "font:11px monospace;color:#9c9;margin-top:6px;word-break:break-all;user-select:text;", `LoRA: ${run.lora}`));
  if (run.state === "failed" && run.error) box.append(el("pre", "font:11px monospace;color:#e88;white-space:pre-wrap;margin:6px 0 0;max-height:140px;overflow:auto;user-select:text;", run.error));

  const actions = el("div", "display:flex;gap:6px;margin-top:8px;");
  const log = el("pre", "display:none;font:10px monospace;color:#bbb;background:#111;padding:6px;margin:6px 0 0;max-height:200px;overflow:auto;white-space:pre-wrap;user-select:text;");
  if (["running", "queued"].includes(run.state) && !run.stop_requested)
    actions.append(button("Stop", () => post(run.id, "stop"), "Stop at the end of this step; the state is saved and Resume continues it"));
  if (["stopped", "failed"].includes(run.state))
    actions.append(button("Resume", () => post(run.id, "resume"), run.resumable ? "Continue from the saved state, in the background" : "Start again in the background (no saved state)"));
  if (run.log) actions.append(button("Log", () => openLog(run.id, log), "Show the end of the run's log"));
  box.append(actions, log);
  return box;
}

function render(runs) {
  if (!panel) return;
  const list = panel.querySelector(".lt-runs");
  const open = new Set([...list.querySelectorAll("pre")].filter((p) => p.style.display === "block").map((p) => p.closest("[data-run]")?.dataset.run));
  list.replaceChildren(...(runs.length ? runs.map(card) : [el("div", "color:#888;font:12px sans-serif;padding:8px;",
    "No runs yet. Set LoRA Train's run_in to background to train without holding the queue.")]));
  for (const id of open) list.querySelector(`[data-run="${CSS.escape(id)}"] button[title^="Show"]`)?.click();
}

function toast(severity, summary, detail) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity, summary, detail, life: 8000 });
  else console.log(`[LoRA Trainer] ${summary}: ${detail}`);
}

function announce(runs) {
  const now = Object.fromEntries(runs.map((r) => [r.id, r.state]));
  if (known) {
    let refresh = false;
    for (const run of runs) {
      const before = known[run.id];
      if (!before || before === run.state || !["queued", "running"].includes(before)) continue;
      if (run.state === "done") {
        toast("success", `LoRA ${run.id} is trained`, run.lora || "");
        refresh = true;
      } else if (run.state === "failed") toast("error", `Training ${run.id} failed`, (run.error || "").split("\n")[0]);
      else if (run.state === "stopped") toast("info", `Training ${run.id} stopped`, `at step ${run.step}: Resume continues it`);
    }
    if (refresh) app.refreshComboInNodes?.(); // LoraLoader's list shows the new file
  }
  known = now;
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const response = await api.fetchApi("/lora_trainer/runs");
    if (response.ok) {
      const { runs } = await response.json();
      announce(runs);
      render(runs);
    }
  } catch (err) {
    console.warn("[LoRA Trainer] runs:", err);
  }
  timer = setTimeout(poll, panel ? POLL_OPEN_MS : POLL_CLOSED_MS);
}

app.registerExtension({
  name: "lora_trainer.training_panel",
  setup() {
    app.extensionManager?.registerSidebarTab?.({
      id: "lora-trainer-runs",
      icon: "pi pi-chart-line",
      title: "Training",
      tooltip: "LoRA training runs: progress, loss, samples, Stop / Resume",
      type: "custom",
      render: (element) => {
        panel = el("div", "padding:8px;height:100%;overflow:auto;box-sizing:border-box;");
        panel.className = "lt-training-panel";
        panel.append(el("div", "font:14px sans-serif;color:#eee;margin-bottom:4px;", "LoRA training runs"), el("div", "", null));
        panel.lastChild.className = "lt-runs";
        element.replaceChildren(panel);
        poll();
      },
      destroy: () => { panel = null; },
    });
    poll();
  },
});
