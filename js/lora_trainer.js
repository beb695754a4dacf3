// LoRA Trainer pack: live loss curve and step estimate on the LoRA Train node.
// Plain ES module, loaded by ComfyUI from WEB_DIRECTORY; no build step, no dependencies.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { chartContext } from "./chart_canvas.js";

const TRAIN = "LT_LoraTrain";
const DATASET = "LT_DatasetLoader";
const MERGE = "LT_DatasetMerge"; // its summary: "N datasets, M images, S samples per epoch" + a line per dataset
const SOURCES = [DATASET, MERGE];
const LOSS_EVENT = "lt.train.loss"; // {node, step, total, loss, smoothed} from nodes/train.py
const MAX_POINTS = 4000; // older points are thinned out beyond this
const trainNodes = new Set();

function chain(obj, name, fn) {
  const orig = obj[name];
  obj[name] = function (...args) {
    const result = orig?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

const widgetValue = (node, name) => node.widgets?.find((w) => w.name === name)?.value;

// ---- step estimate -------------------------------------------------------------------------

function datasetNode(node) {
  const slot = node.findInputSlot?.("dataset") ?? -1;
  let src = slot >= 0 ? node.getInputNode(slot) : null;
  for (let hops = 0; src && src.type === "Reroute" && hops < 20; hops++) src = src.getInputNode(0);
  return src;
}

const sourceInputs = {}; // node type -> its widget names, from its node definition
const snapshot = (node) => JSON.stringify((sourceInputs[node.type] ?? []).map((name) => widgetValue(node, name)));

function estimateText(node) {
  const src = datasetNode(node);
  if (!src) return "connect a Dataset Loader to estimate the steps";
  if (!SOURCES.includes(src.type)) return "total steps: known when training starts";
  const info = src.__ltSummary;
  if (!info) return `total steps: run ${src.type === MERGE ? "Dataset Merge" : "Dataset Loader"} to count images`;
  const epochs = Number(widgetValue(node, "max_train_epochs")) || 1;
  const batch = Number(widgetValue(node, "train_batch_size")) || 1;
  const steps = Math.ceil(info.samples / batch) * epochs;
  let text = `total steps ≈ ${info.samples} samples × ${epochs} epochs / ${batch} batch = ${steps}`;
  if (info.parts) text += ` (${info.parts.join(", ")}; a dataset may set its own batch size)`;
  if (info.widgets !== snapshot(src)) text += ` (${src.type === MERGE ? "Dataset Merge" : "Dataset Loader"} changed since it ran)`;
  else if (node.inputs?.find((i) => i.name === "options")?.link != null)
    text += " (Training Options may change it)";
  return text;
}

function refreshEstimate(node) {
  const ui = node.__lt;
  if (!ui) return;
  const text = estimateText(node);
  if (ui.estimate.textContent !== text) ui.estimate.textContent = text;
}

// ---- loss chart ----------------------------------------------------------------------------

function drawChart(node) {
  const ui = node.__lt;
  const canvas = ui?.canvas;
  if (!canvas) return;
  const { ctx, w, h } = chartContext(canvas);
  const pts = ui.points;
  if (!pts.length) {
    ctx.fillStyle = "#888";
    ctx.textAlign = "center";
    ctx.fillText(ui.note || "loss curve appears here while training", w / 2, h / 2);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) {
    lo = Math.min(lo, p.loss, p.smoothed);
    hi = Math.max(hi, p.loss, p.smoothed);
  }
  if (hi - lo < 1e-12) { hi += 1e-6; lo -= 1e-6; }
  const pad = { l: 6, r: 6, t: 18, b: 14 };
  const total = Math.max(ui.total || 0, pts[pts.length - 1].step, 1);
  const x = (s) => pad.l + (s / total) * (w - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (h - pad.t - pad.b);
  const line = (key, color, width) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(p.step), y(p[key])) : ctx.moveTo(x(p.step), y(p[key]))));
    ctx.stroke();
  };
  line("loss", "rgba(110,160,255,0.45)", 1);
  line("smoothed", "#ffb347", 2);
  const last = pts[pts.length - 1];
  ctx.fillStyle = "#ccc";
  ctx.textAlign = "left";
  ctx.fillText(`max ${hi.toPrecision(4)}`, pad.l, 12);
  ctx.fillText(`min ${lo.toPrecision(4)}`, pad.l, h - 3);
  ctx.textAlign = "right";
  ctx.fillText(`step ${last.step} / ${ui.total || "?"}`, w - pad.r, 12);
  ctx.fillText(`loss ${last.loss.toFixed(4)}  smoothed ${last.smoothed.toFixed(4)}`, w - pad.r, h - 3);
}

const CHART_HEIGHT = 150; // the live chart keeps this height before, during and after a run

function addUi(node) {
  const root = document.createElement("div");
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;box-sizing:border-box;overflow:hidden;";
  const estimate = document.createElement("div");
  estimate.style.cssText = "font:12px sans-serif;color:#bbb;white-space:normal;line-height:1.3;flex:none;";
  const canvas = document.createElement("canvas");
  canvas.style.cssText = `flex:1 0 ${CHART_HEIGHT}px;width:100%;min-height:${CHART_HEIGHT}px;border-radius:4px;`;
  // after a run: warnings in plain sight, the long headless commands folded behind one line + Copy
  const warn = document.createElement("div");
  warn.style.cssText = "font:11px sans-serif;color:#e8b04a;white-space:pre-wrap;flex:none;max-height:48px;overflow:auto;";
  const details = document.createElement("details");
  details.style.cssText = "font:11px sans-serif;color:#9c9;flex:none;";
  const summary = document.createElement("summary");
  summary.style.cssText = "cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;";
  const copy = document.createElement("button");
  copy.textContent = "Copy";
  copy.title = "Copy the commands that run this training headless";
  copy.style.cssText = "margin-left:6px;font:11px sans-serif;padding:0 6px;cursor:pointer;";
  const info = document.createElement("pre");
  info.style.cssText = "font:10px monospace;white-space:pre-wrap;word-break:break-all;user-select:text;"
    + "max-height:90px;overflow:auto;margin:2px 0 0;";
  copy.onclick = (e) => { e.preventDefault(); navigator.clipboard?.writeText(info.textContent); copy.textContent = "Copied"; };
  details.append(summary, info);
  details.addEventListener("toggle", () => fitNode(node));
  details.style.display = "none";
  root.append(estimate, canvas, warn, details);
  node.__lt = { estimate, canvas, warn, details, summary, copy, info, points: [], total: 0 };
  if (typeof node.addDOMWidget === "function") {
    const widget = node.addDOMWidget("lt_loss_chart", "lt_loss_chart", root, {
      serialize: false, hideOnZoom: false, getMinHeight: () => minHeight(node), getValue: () => "", setValue: () => {},
    });
    widget.serialize = false; // keep it out of widgets_values and the prompt
  }
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => drawChart(node)).observe(canvas);
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], size[0], 380), Math.max(node.size[1], size[1])]);
  refreshEstimate(node);
  drawChart(node);
}

// the chart's height plus what is shown around it: the node grows instead of the chart shrinking
function minHeight(node) {
  const ui = node.__lt;
  if (!ui) return CHART_HEIGHT + 40;
  const extra = (ui.details.style.display === "none" ? 0 : 24) + (ui.warn.textContent ? 52 : 0);
  return CHART_HEIGHT + 40 + extra + (ui.details.open ? 100 : 0);
}

function fitNode(node) {
  const want = node.computeSize();
  if (want[1] > node.size[1]) node.setSize([node.size[0], want[1]]);
  node.setDirtyCanvas?.(true, true);
}

// the text LoRA Train shows after a run: "warning: ..." lines, then the headless commands (or the
// background run's facts); the chart gets the run's final points
function showResult(node, message) {
  const ui = node.__lt;
  if (!ui) return;
  const text = (message?.text ?? []).join("\n");
  const lines = text.split("\n");
  ui.warn.textContent = lines.filter((l) => l.startsWith("warning:")).join("\n");
  const rest = lines.filter((l) => !l.startsWith("warning:")).join("\n").trim();
  ui.info.textContent = rest;
  ui.summary.textContent = rest.split("\n")[0] || "";
  ui.summary.append(ui.copy);
  ui.copy.textContent = "Copy";
  ui.details.style.display = rest ? "" : "none";
  fitNode(node);
  ui.note = rest.startsWith("Training in the background") ? "training in the background: see the Training tab" : "";
  if (ui.note) { ui.points = []; drawChart(node); }
  const chart = message?.lt_chart?.[0];
  if (chart?.points?.length) {
    ui.total = chart.total;
    ui.points = chart.points.map(([step, loss, smoothed]) => ({ step, loss, smoothed }));
    drawChart(node);
  }
}

function onLoss({ detail }) {
  if (!detail) return;
  const id = String(detail.node);
  for (const node of trainNodes) {
    const own = String(node.id);
    if (id !== own && !(node.graph !== app.graph && id.endsWith(":" + own))) continue;
    const ui = node.__lt;
    if (!ui) continue;
    if (detail.total !== ui.total) ui.points = []; // a new run
    ui.note = "";
    while (ui.points.length && ui.points[ui.points.length - 1].step >= detail.step) ui.points.pop(); // rerun, resume
    ui.total = detail.total;
    ui.points.push({ step: detail.step, loss: Number(detail.loss), smoothed: Number(detail.smoothed) });
    if (ui.points.length > MAX_POINTS) ui.points = ui.points.filter((_, i) => i % 2 === 0 || i === ui.points.length - 1);
    drawChart(node);
  }
}

app.registerExtension({
  name: "lora_trainer.ui",
  setup() {
    api.addEventListener(LOSS_EVENT, onLoss);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (SOURCES.includes(nodeData.name)) {
      sourceInputs[nodeData.name] = Object.keys({ ...nodeData.input?.required, ...nodeData.input?.optional });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const first = String(message?.text?.[0] ?? "").split("\n")[0];
        const m = first.match(/(\d+)\s+images?,\s*(\d+)\s+samples per epoch/);
        // Dataset Merge: a line per dataset, "<name>: <folders> -> N samples per epoch ..."
        const parts = this.type !== MERGE ? [] : String(message?.text?.[0] ?? "").split("\n").slice(1)
          .map((line) => line.match(/^(.+?): .* -> (\d+) samples per epoch/)).filter(Boolean)
          .map((p) => `${p[1]}: ${p[2]}`);
        if (m) this.__ltSummary = { images: +m[1], samples: +m[2], parts: parts.length ? parts : null, widgets: snapshot(this) };
        trainNodes.forEach(refreshEstimate);
      });
    }
    if (nodeData.name !== TRAIN) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      trainNodes.add(this);
      addUi(this);
      for (const name of ["max_train_epochs", "train_batch_size"]) {
        const w = this.widgets?.find((x) => x.name === name);
        if (w) chain(w, "callback", () => refreshEstimate(this));
      }
    });
    chain(nodeType.prototype, "onExecuted", function (message) {
      showResult(this, message);
    });
    chain(nodeType.prototype, "onRemoved", function () {
      trainNodes.delete(this);
    });
    chain(nodeType.prototype, "onConnectionsChange", function () {
      refreshEstimate(this);
    });
    // cheap safety net: catches undo, paste and edits of the Dataset Loader's widgets
    chain(nodeType.prototype, "onDrawForeground", function () {
      refreshEstimate(this);
    });
  },
});
