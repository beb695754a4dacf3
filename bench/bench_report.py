"""Turning the measurements of bench/train_step.py into ratios, target checks and a table."""

from __future__ import annotations

import statistics

RSS_TARGET_GB = {"sd15": 4.2, "sdxl": 8.0}  # full-size runs only
STEP_TARGET, SPEEDUP_TARGET = 1.05, 1.3


def _epoch_from_2(seconds: list[float]) -> float:
    """The median epoch from epoch 2 on (epoch 1 warms up; a stall on a busy machine
    lengthens one epoch, not the median)."""
    return statistics.median(seconds[1:] or seconds)


def _steps_per_epoch(run: dict) -> int:
    return run["steps"] // max(len(run["epoch_seconds"]), 1)


def _calls_from_epoch_2(run: dict) -> int:
    """VAE + text-encoder calls counted while epochs 2 and later ran."""
    return sum(n for kind in run["encoder_calls"].values() for epoch, n in kind.items() if int(epoch) >= 2)


def summarize(family: str, size: str, runs: dict) -> dict:
    """Ratios and target checks of one family from its four measurements."""
    cached, live, floor, ref = runs["ours_cached"], runs["ours_live"], runs["floor"], runs["reference"]
    floor_steps = floor["step_seconds"][2:] or floor["step_seconds"]  # the first steps warm up
    floor_step = statistics.median(floor_steps)
    ours_epoch = _epoch_from_2(cached["epoch_seconds"])
    later_calls = _calls_from_epoch_2(cached)
    row = {
        "family": family, "size": size,
        "our_step_s": cached["seconds_per_step"], "floor_step_s": floor_step,
        "step_over_floor": cached["seconds_per_step"] / floor_step,
        "our_epoch_s": ours_epoch, "reference_epoch_s": _epoch_from_2(ref["epoch_seconds"]),
        "live_epoch_s": _epoch_from_2(live["epoch_seconds"]),
        "encoder_calls_epoch_2_on": later_calls,
        "live_encoder_calls_epoch_2_on": _calls_from_epoch_2(live),
        "peak_rss_gb": cached["peak_rss_gb"], "model_gb": cached["model_gb"]["total"],
        "peak_rss_gb_live": live["peak_rss_gb"], "peak_rss_gb_reference": ref["peak_rss_gb"],
    }
    row["reference_over_ours"] = row["reference_epoch_s"] / ours_epoch
    # what no loop can beat: the reference's epoch over the floor's steps (the UNet's work alone)
    row["reference_over_floor"] = row["reference_epoch_s"] / (floor_step * _steps_per_epoch(cached))
    row["cached_over_live"] = ours_epoch / row["live_epoch_s"]
    row["rss_over_model"] = row["peak_rss_gb"] / row["model_gb"]
    checks = {
        "step <= 1.05x floor": row["step_over_floor"] <= STEP_TARGET,
        ">= 1.3x faster than reference": row["reference_over_ours"] >= SPEEDUP_TARGET,
        "0 encoder calls from epoch 2": later_calls == 0,
    }
    if size == "full" and family in RSS_TARGET_GB:
        checks[f"peak RSS <= {RSS_TARGET_GB[family]} GB"] = row["peak_rss_gb"] <= RSS_TARGET_GB[family]
    row["targets"] = checks
    return row


COLUMNS = [  # (header, key, format)
    ("family", "family", "{}"),
    ("our step s", "our_step_s", "{:.3f}"),
    ("floor s", "floor_step_s", "{:.3f}"),
    ("step / floor", "step_over_floor", "{:.3f}"),
    ("reference epoch s", "reference_epoch_s", "{:.2f}"),
    ("our epoch s", "our_epoch_s", "{:.2f}"),
    ("reference / ours", "reference_over_ours", "{:.2f}x"),
    ("reference / floor", "reference_over_floor", "{:.2f}x"),
    ("uncached epoch s", "live_epoch_s", "{:.2f}"),
    ("cached / uncached", "cached_over_live", "{:.2f}"),
    ("encoder calls epoch>=2", "encoder_calls_epoch_2_on", "{}"),
    ("peak RSS GB", "peak_rss_gb", "{:.2f}"),
    ("model GB", "model_gb", "{:.3f}"),
    ("RSS / model", "rss_over_model", "{:.1f}"),
]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for _, key, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def targets_table(rows: list[dict]) -> str:
    lines = ["| family | target | met |", "|---|---|---|"]
    for row in rows:
        for name, met in row["targets"].items():
            lines.append(f"| {row['family']} ({row['size']}) | {name} | {'yes' if met else 'NO'} |")
    return "\n".join(lines)


def plain_table(rows: list[dict]) -> str:
    """The same table aligned for a terminal."""
    cells = [[h for h, _, _ in COLUMNS]] + [[fmt.format(row[key]) for _, key, fmt in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)
