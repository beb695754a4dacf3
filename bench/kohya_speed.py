"""Seconds per step against kohya sd-scripts: the same TOML, the same network, taking turns.

    python bench/kohya_speed.py --kohya /tmp/kohya --kohya-python /tmp/kohya-venv/bin/python \\
        --kohya-env PYTHONPATH=/tmp/kohya-shims [--family sd15 sdxl] [--steps 8] [--rounds 2]

One TOML per family (bench/kohya_runs.py: full-size random-weight single-file checkpoint, 4
painted images, 256², batch 1, networks.lora dim 8 / alpha 4 - kohya's module set on both sides,
UNet only, bf16, AdamW, cached latents and text-encoder outputs; kohya's SD1.5 script cannot cache
the latter and runs CLIP-L every step), trained ``--steps`` steps by kohya's train_network.py /
sdxl_train_network.py and by ``python -m trainer train``, one process at a time, in ``--rounds``
rounds that alternate who goes first.

Seconds per step: neither trainer's log; both run under bench/step_clock.py, which notes when
every optimizer step ends (torch's global optimizer hook), and a step is the time between two
consecutive step ends: the median over steps ``--warmup``+1 .. ``--steps`` (load and caching are
before step 1 and never counted). Also CPU seconds per step (robust to other jobs on the machine),
minor page faults per step, the whole run's wall time and the process's peak RSS (wait4).
Prints per-round rows and ours/kohya ratios; writes ``<out>/kohya_speed.md`` and ``.json``.
The ratios only mean something on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kohya_runs import (ROOT, SCRIPTS, available_gb, base_values, ensure_inputs, parse_env,  # noqa: E402
                        run_process, write_toml)

CLOCK = HERE / "step_clock.py"


def run_one(who: str, family: str, toml: Path, folder: Path, args, env: dict) -> dict:
    clock = folder / f"{who}_steps.json"
    clock.unlink(missing_ok=True)
    out_dir = folder / who
    if who == "kohya":
        cmd = [args.kohya_python, str(CLOCK), str(clock), "script", str(Path(args.kohya) / SCRIPTS[family]),
               "--config_file", str(toml), "--output_dir", str(out_dir)]
        run = run_process(who, cmd, Path(args.kohya), folder / "kohya.log", out_dir / "lora.safetensors", env)
    else:
        cmd = [args.python, str(CLOCK), str(clock), "module", "trainer", "train", "--config", str(toml),
               "--set", f"output_dir={json.dumps(str(out_dir))}"]
        run = run_process(who, cmd, ROOT, folder / "ours.log", out_dir / "lora.safetensors")
    result = {"who": who, "returncode": run.returncode, "wall_s": run.wall_s, "peak_rss_gib": run.peak_rss_gb,
              "log": str(run.log)}
    if not run.ok or not clock.is_file():
        print(f"{who} failed (exit {run.returncode}); the end of {run.log}:\n{run.tail()}", flush=True)
        return result
    ticks = json.loads(clock.read_text())["steps"]
    if len(ticks) != args.steps:
        print(f"note: {who} made {len(ticks)} optimizer steps, {args.steps} asked", flush=True)
    deltas = [[b - a for a, b in zip(prev, cur)] for prev, cur in zip(ticks, ticks[1:])]
    timed = deltas[max(args.warmup - 1, 0):]  # deltas[i] is step i+2
    result.update(steps=len(ticks), first_step_end_s=ticks[0][0] if ticks else None,
                  step_s=[d[0] for d in timed], cpu_s=[d[1] for d in timed], faults=[d[2] for d in timed],
                  modules=count_modules(run.lora))
    return result


def count_modules(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(1 for k in f.keys() if k.endswith(".lora_down.weight"))


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def row(family: str, rnd: int, kohya: dict, ours: dict) -> list:
    def m(r, key):
        return median(r.get(key, []))

    ratio = m(ours, "step_s") / m(kohya, "step_s")
    return [family, rnd, f"{kohya.get('modules', '-')}/{ours.get('modules', '-')}",
            f"{m(kohya, 'step_s'):.3f}", f"{m(ours, 'step_s'):.3f}", f"{ratio:.2f}",
            f"{m(kohya, 'cpu_s'):.2f}", f"{m(ours, 'cpu_s'):.2f}", f"{m(kohya, 'faults'):,.0f}",
            f"{m(ours, 'faults'):,.0f}", f"{kohya['wall_s']:.1f}", f"{ours['wall_s']:.1f}",
            f"{kohya['peak_rss_gib']:.2f}", f"{ours['peak_rss_gib']:.2f}"]


HEADER = ["model", "round", "modules kohya/ours", "kohya s/step", "ours s/step", "ratio", "kohya CPU-s/step",
          "ours CPU-s/step", "kohya faults/step", "ours faults/step", "kohya whole run s", "ours whole run s",
          "kohya peak RSS GiB", "ours peak RSS GiB"]


def summary(family: str, results: list[tuple[dict, dict]]) -> str:
    def pooled(who, key):
        return median([v for pair in results for v in pair[who].get(key, [])])

    step = pooled(1, "step_s") / pooled(0, "step_s")
    cpu = pooled(1, "cpu_s") / pooled(0, "cpu_s")
    rss = max(p[1]["peak_rss_gib"] for p in results) / max(p[0]["peak_rss_gib"] for p in results)
    return (f"{family}: ours/kohya per step {step:.2f}x (CPU time {cpu:.2f}x), peak RSS {rss:.2f}x "
            f"(medians over all rounds' timed steps; target <= 0.8x per step, <= 0.5x RSS)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kohya", required=True, help="a kohya-ss/sd-scripts checkout")
    p.add_argument("--kohya-python", required=True, help="a python that can import it")
    p.add_argument("--kohya-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for kohya's process (repeatable), e.g. PYTHONPATH=/tmp/kohya-shims")
    p.add_argument("--python", default=sys.executable, help="the python that runs our CLI")
    p.add_argument("--family", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    p.add_argument("--rounds", type=int, default=2, help="runs of each trainer, alternating who goes first")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    if args.steps < args.warmup + 1:
        p.error("--steps must be larger than --warmup")
    env = parse_env(args.kohya_env)
    rows, lines, raw = [], [], {}
    for family in args.family:
        inputs = ensure_inputs(family, Path(args.out))
        folder = Path(args.out).resolve() / "kohya_speed" / family
        toml = write_toml(folder / "run.toml", {**base_values(inputs), "max_train_steps": args.steps,
                                                "network_train_unet_only": True, "cache_text_encoder_outputs": True})
        pairs = []
        for rnd in range(1, args.rounds + 1):
            order = ("kohya", "ours") if rnd % 2 else ("ours", "kohya")
            done = {}
            for who in order:  # one process at a time
                print(f"[{family} round {rnd}] {who} ({available_gb():.1f} GB available) ...", flush=True)
                done[who] = run_one(who, family, toml, folder / f"round{rnd}", args, env)
            if "step_s" not in done["kohya"] or "step_s" not in done["ours"]:
                return 2
            pairs.append((done["kohya"], done["ours"]))
            rows.append(row(family, rnd, done["kohya"], done["ours"]))
            print("| " + " | ".join(HEADER) + " |\n| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
        lines.append(summary(family, pairs))
        raw[family] = [{"kohya": k, "ours": o} for k, o in pairs]
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    text = "\n".join(["# ours against kohya sd-scripts: seconds per step", "",
                      f"{args.steps} steps per run, the first {args.warmup} not timed; {args.rounds} rounds", "",
                      *table, "", *lines]) + "\n"
    print(text)
    from trainer.atomic import write_text

    out = Path(args.out).resolve()
    write_text(out / "kohya_speed.json", json.dumps(raw, indent=1))
    print(f"report: {write_text(out / 'kohya_speed.md', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
