// LoRA Trainer pack: a canvas cleared for a chart at the screen's pixel density (shared by the
// LoRA Train node's chart and the Training tab's curves). Defines no extension of its own.

export function chartContext(canvas, fallbackWidth = 1, fallbackHeight = 1) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, canvas.clientWidth || fallbackWidth), h = Math.max(1, canvas.clientHeight || fallbackHeight);
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = "#1b1b1b";
  ctx.fillRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  return { ctx, w, h };
}
