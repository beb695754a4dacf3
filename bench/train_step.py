"""Training-step benchmark: our loop against the bare UNet step and a diffusers-style reference.

    python bench/train_step.py --quick              # tiny SD1.5 / SDXL / Kolors, a minute or two
    python bench/train_step.py --full               # full-size SD1.5 and SDXL, random bf16, 256²
    python bench/train_step.py --full --family sdxl --steps 4 --epochs 4 --out bench/out

For each family, on the same model, batch, LoRA (rank 8 on the modules train() builds) and data, each in its own
process: trainer.train.loop.train() with caching (latents + text outputs) and without, the bare
UNet forward + backward + AdamW step on a prepared batch (the floor), and a plain loop after
diffusers' train_text_to_image_lora recipes (VAE and text encoder every step). Prints a table of
ratios and targets and writes it to <out>/train_step_<quick|full>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_report import markdown_table, plain_table, summarize, targets_table  # noqa: E402
from bench_setup import FULL, ROOT, TINY, Spec, ensure_dataset, ensure_model  # noqa: E402

KINDS = ("ours_cached", "ours_live", "floor", "reference")


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        ram_gb = int(mem.split()[1]) * 1024 / 1e9
    except (OSError, StopIteration):
        ram_gb = float("nan")
    return {"cpu": cpu, "threads": torch.get_num_threads(), "ram_gb": round(ram_gb, 1),
            "torch": torch.__version__, "python": platform.python_version()}


def measure(kind: str, spec: Spec, folder: Path) -> dict:
    """Run one measurement in a fresh Python process; returns its result JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = folder / f"{kind}_spec.json", folder / f"{kind}.json"
    from trainer.atomic import write_text

    write_text(spec_path, json.dumps(spec.to_dict(), indent=1))
    result_path.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "bench_run.py"), kind, str(spec_path), str(result_path)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not result_path.is_file():
        raise SystemExit(f"{kind} ({spec.family}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    print(f"  {kind:<12} done in {time.perf_counter() - started:6.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB",
          flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny SD1.5 / SDXL / Kolors (default)")
    mode.add_argument("--full", action="store_true", help="full-size SD1.5 and SDXL, random bf16 weights, 256²")
    parser.add_argument("--family", nargs="+", choices=["sd15", "sdxl", "kolors"], help="default: all of the size")
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch (images = steps x batch)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (epoch 1 warms up)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="results, models and scratch")
    args = parser.parse_args()
    size = "full" if args.full else "quick"
    shape = FULL if args.full else TINY
    families = args.family or (["sd15", "sdxl"] if args.full else ["sd15", "sdxl", "kolors"])
    if args.full and "kolors" in families:
        raise SystemExit("Full-size random models exist for sd15 and sdxl only.")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".gitignore").exists():
        (out / ".gitignore").write_text("*\n")  # results, models and scratch stay out of git
    data = ensure_dataset(out / f"data_{size}", args.steps * shape["batch"], shape["resolution"])
    rows, raw = [], {}
    for family in families:
        print(f"{family} ({size}): building / finding the model...", flush=True)
        model = ensure_model(family, "full" if args.full else "tiny", out)
        runs = {}
        for kind in KINDS:
            scratch = out / "runs" / f"{family}_{size}" / kind
            spec = Spec(family, str(model), str(data), shape["resolution"], shape["batch"], args.epochs,
                        args.steps, "bf16", str(scratch))
            runs[kind] = measure(kind, spec, scratch)
        raw[family] = runs
        rows.append(summarize(family, "full" if args.full else "tiny", runs))
    info = machine()
    command = "python bench/train_step.py " + " ".join(sys.argv[1:])
    header = (f"{info['cpu']}, {info['threads']} threads, {info['ram_gb']} GB RAM, torch {info['torch']}; "
              f"batch {shape['batch']}, {shape['resolution']}², bf16, LoRA rank 8 on the modules train() builds, "
              f"{args.steps} steps per epoch, {args.epochs} epochs")
    print("\n" + header + "\n" + plain_table(rows) + "\n")
    print(targets_table(rows))
    from trainer.atomic import write_text

    text = f"`{command}`\n\n{header}\n\n{markdown_table(rows)}\n\n{targets_table(rows)}\n"
    write_text(out / f"train_step_{size}.md", text)
    write_text(out / f"train_step_{size}.json", json.dumps({"command": command, "machine": info, "rows": rows,
                                                            "runs": raw}, indent=1))
    print(f"\nwritten: {out / f'train_step_{size}.md'} and .json")


if __name__ == "__main__":
    main()
