"""The dataset report as text (one finding per line) and as a summary card image."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .report import Report
from .report_masks import mask_lines
def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def report_lines(report: Report, limit: int = 10) -> list[str]:
    r, rel = report, (lambda p: _rel(p, report.root))

    def listing(title: str, rows: list[str]) -> list[str]:
        if not rows:
            return []
        more = [f"  ... and {len(rows) - limit} more"] if len(rows) > limit else []
        return [title] + [f"  {row}" for row in rows[:limit]] + more

    lines = [f"Dataset {r.root}",
             f"images {r.images}, captioned {r.captioned}, missing captions {len(r.missing_captions)}, "
             f"empty captions {len(r.empty_captions)}" + (f", regularization {r.reg_images}" if r.reg_images else "")]
    lines += listing("folders (repeats):", [f"{f.name}: {f.images} images x {f.repeats} = {f.samples} samples, "
                                            f"{f.captioned} captioned" for f in r.folders])
    how = " (rounded up per bucket)" if r.buckets else ""
    lines.append(f"steps: {r.samples_per_epoch} samples / batch {r.batch_size}{how} -> {r.steps_per_epoch} per epoch "
                 f"x {r.epochs} epochs = {r.estimated_steps}")
    lines += listing("datasets (each at its own settings):", r.parts)
    lines.append("shorter side: " + ", ".join(f"{k}: {v}" for k, v in r.size_histogram.items())
                 + " | " + ", ".join(f"{k} {v}" for k, v in sorted(r.orientation.items())))
    if r.buckets:
        lines.append("buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in r.buckets.items()))
    lines += listing(f"below the training size {r.resolution[0]}x{r.resolution[1]} (upscaled, may look soft):",
                     [f"{rel(p)} {w}x{h} (x{f:g})" for p, (w, h), f in r.small_images])
    lines += listing(f"near-duplicates (phash distance <= {r.dup_threshold}):",
                     [f"{rel(a)} ~ {rel(b)} (distance {d})" for a, b, d in r.near_duplicates])
    lines += mask_lines(r.masks, rel, listing)
    lines += listing("top tags (images):", [f"{t}: {n}" for t, n in r.tag_frequency])
    lines += listing("missing captions:", [rel(p) for p in r.missing_captions])
    lines += listing("empty captions:", [rel(p) for p in r.empty_captions])
    lines += listing("unreadable images:", [f"{rel(p)}: {why}" for p, why in r.unreadable_images])
    lines += listing("unreadable captions:", [f"{rel(p)}: {why}" for p, why in r.caption_problems])
    lines += listing("notes:", r.notes)
    return lines


def report_text(report: Report) -> str:
    """The report as plain text (one finding per line)."""
    return "\n".join(report_lines(report)) + "\n"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def report_image(report: Report, width: int = 720) -> Image.Image:
    """A summary card: headline numbers, warnings in colour, a bar chart of the size bands and
    the top tags."""
    r = report
    font, big = _font(14), _font(20)
    line_h = 20
    head = [f"{r.images} images  |  {r.captioned} captioned  |  {r.estimated_steps} steps"]
    info = [f"{r.samples_per_epoch} samples/epoch, batch {r.batch_size}, {r.epochs} epochs, "
            f"{r.steps_per_epoch} steps/epoch, training {r.resolution[0]}x{r.resolution[1]}"]
    info += [f"{f.name}: {f.images} x {f.repeats} repeats" for f in r.folders[:6]]
    info += [line[:110] for line in r.parts[:4]]
    if r.masks.coverage:
        info.append(f"loss masks: {len(r.masks.coverage)} images, mean coverage {100 * r.masks.mean_coverage:.0f}%")
    warnings = list(r.masks.warnings())
    if r.missing_captions or r.empty_captions:
        warnings.append(f"{len(r.missing_captions)} missing / {len(r.empty_captions)} empty captions")
    if r.small_images:
        warnings.append(f"{len(r.small_images)} images below {r.resolution[0]}x{r.resolution[1]}: upscaled")
    if r.near_duplicates:
        warnings.append(f"{len(r.near_duplicates)} near-duplicate pairs (phash <= {r.dup_threshold})")
    if r.unreadable_images or r.caption_problems:
        warnings.append(f"{len(r.unreadable_images)} unreadable images, {len(r.caption_problems)} unreadable captions")
    bars = list(r.size_histogram.items())
    tags = r.tag_frequency[:10]
    height = (24 + 30 + line_h * (len(info) + max(1, len(warnings)) + 1) + 24
              + line_h * max(1, len(bars)) + 24 + line_h * max(1, len(tags)) + 16)
    img = Image.new("RGB", (width, height), (250, 250, 252))
    draw = ImageDraw.Draw(img)
    y = 12
    draw.text((16, y), head[0], fill=(20, 20, 30), font=big)
    y += 34
    for text in info:
        draw.text((16, y), text, fill=(60, 60, 70), font=font)
        y += line_h
    for text in warnings or ["no problems found"]:
        colour = (190, 40, 30) if warnings else (30, 130, 60)
        draw.text((16, y), ("! " if warnings else "") + text, fill=colour, font=font)
        y += line_h
    y += line_h // 2

    def chart(title: str, rows: list[tuple[str, int]], y: int, colour) -> int:
        draw.text((16, y), title, fill=(20, 20, 30), font=font)
        y += 22
        top = max((n for _, n in rows), default=1) or 1
        bar_x = 220
        for label, n in rows or [("none", 0)]:
            draw.text((24, y), label[:28], fill=(60, 60, 70), font=font)
            w = int((width - bar_x - 60) * n / top)
            if w:
                draw.rectangle((bar_x, y + 3, bar_x + w, y + line_h - 5), fill=colour)
            draw.text((bar_x + w + 6, y), str(n), fill=(60, 60, 70), font=font)
            y += line_h
        return y

    y = chart("shorter side (px)", bars, y, (70, 120, 200))
    chart("top tags (images)", tags, y + 4, (90, 160, 110))
    return img
