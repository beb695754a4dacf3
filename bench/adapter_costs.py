"""What each network type costs: file size per family and dim, step time and peak RSS per algorithm.

    python bench/adapter_costs.py sizes [--family sd15 sdxl kolors] [--dims 8 16 32] [--check]
    python bench/adapter_costs.py speed [--algos LoCon LoHa ...] [--steps 10] [--warmup 2] [--rounds 1]

``sizes``: for every ``TrainConfig.network`` (LoRA, LoCon, LoHa, LoKr, DoRA, OFT), family and dim
(alpha = dim / 2, UNet only, the preset the choice defaults to), the network the run builds
(trainer/lora/builders.py, the same builder train() calls) on the full-size UNet architecture on
the meta device, and the size of the file it saves in fp16: 8 bytes + the safetensors JSON header
+ 2 bytes per element (alphas too, as save_lora casts them), without the training metadata
(``ss_*``, a few KB). ``--check`` also writes the sd15 dim-8 files with save_lora and compares.

``speed``: full-size random SD1.5 (bench/kohya_runs.py: single-file checkpoint, 4 painted images,
256², batch 1, bf16, AdamW, cached latents and text-encoder outputs, UNet only) at dim 16 / alpha 8,
``python -m trainer train`` with ``network = <algo>`` under bench/step_clock.py, one process per run,
plain LoRA between every other algorithm (LoRA, X, LoRA, Y, ..., LoRA) so that drift of the shared
machine shows on the LoRA runs. s/step: median time between consecutive optimizer-step ends from
step ``--warmup``+1 on; also CPU-s/step, peak RSS (wait4), the load average before each run.
Writes ``<out>/adapter_costs_<sizes|speed>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_setup import ROOT  # noqa: E402

NETWORKS = ("LoRA", "LoCon", "LoHa", "LoKr", "DoRA", "OFT")
FAMILIES = ("sd15", "sdxl", "kolors")
SAFETENSORS_DTYPE = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32"}


# -- sizes ----------------------------------------------------------------------------------------

def meta_unet(family: str):
    """The family's full-size UNet on the meta device (shapes only, no memory), its Linear / Conv2d
    weights one broadcast value each (LyCORIS's DoRA init computes their norms)."""
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(ROOT / "tests"))
    from lora_builders import real_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(real_unet_config(family))
    for module in unet.modules():  # DoRA's init reads the weight's norm: real values, 2 bytes each
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            shape = module.weight.shape
            module.weight = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16).expand(shape), requires_grad=False)
    return unet


def network_tensors(family: str, network: str, dim: int) -> dict:
    """The kohya/LyCORIS-named tensors the run's builder makes for ``network`` (meta tensors)."""
    from trainer.config import TrainConfig
    from trainer.families import get_family
    from trainer.lora.builders import network_builder
    from trainer.lora.network_choice import apply_network_choice

    config = TrainConfig(network=network, network_dim=dim, network_alpha=dim / 2, network_train_unet_only=True)
    apply_network_choice(config)
    model = SimpleNamespace(unet=meta_unet(family), family=get_family(family), pipe=SimpleNamespace())
    net = network_builder(config.network_module)(model, config, [])
    tensors, _ = net.state_dicts()
    return tensors, config


def safetensors_size(shapes: dict[str, tuple], dtype: str = "F16", metadata: dict | None = None) -> int:
    """Bytes of a .safetensors file holding tensors of ``shapes`` in ``dtype``: 8-byte header length,
    the compact JSON header (padded to 8 bytes with spaces), the data."""
    item = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(shapes):
        nbytes = item
        for n in shapes[name]:
            nbytes *= n
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    return 8 + len(text) + offset


def count_modules(names) -> int:
    return len({k.split(".", 1)[0] for k in names})


def run_sizes(args) -> int:
    import torch

    rows, raw = [], {}
    for network in NETWORKS:
        for family in args.family:
            cells = []
            for dim in args.dims:
                tensors, config = network_tensors(family, network, dim)
                shapes = {k: tuple(v.shape) for k, v in tensors.items()}
                size = safetensors_size(shapes)
                raw[f"{network}/{family}/{dim}"] = {
                    "bytes": size, "modules": count_modules(shapes),
                    "elements": sum(v.numel() for v in tensors.values()),
                    "network_module": config.network_module, "network_args": list(config.network_args or []),
                    "conv_dim": config.conv_dim}
                cells.append(size)
                if args.check and family == "sd15" and dim == args.dims[0]:
                    check_saved(tensors, size, torch)
            mods = raw[f"{network}/{family}/{args.dims[0]}"]["modules"]
            rows.append([network, family, mods] + [f"{c / 1e6:.1f}" for c in cells])
            print("| " + " | ".join(map(str, rows[-1])) + " |", flush=True)
    header = ["network", "family", "modules"] + [f"dim {d} MB" for d in args.dims]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    text = "\n".join(["# LoRA file size per network type (fp16, UNet only, alpha = dim/2, MB = 10^6 bytes)", "",
                      *table]) + "\n"
    print(text)
    write_report(args.out, "adapter_costs_sizes", text, raw)
    return 0


def check_saved(tensors: dict, computed: int, torch) -> None:
    """Write the file with the trainer's own saver (zeros of the same shapes) and compare sizes."""
    import tempfile

    from trainer.lora.kohya_format import TrainedLora, save_lora

    real = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in tensors.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = save_lora(TrainedLora(real, {}), Path(tmp) / "check.safetensors")
        saved = path.stat().st_size
    print(f"  check: save_lora wrote {saved:,} bytes, computed {computed:,} "
          f"({'same' if saved == computed else f'{saved - computed:+,} bytes'})", flush=True)


# -- speed ----------------------------------------------------------------------------------------

def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_speed(args) -> int:
    from kohya_runs import available_gb, base_values, ensure_inputs, run_process, write_toml

    inputs = ensure_inputs("sd15", Path(args.out))
    folder = Path(args.out).resolve() / "adapter_costs"
    values = {**base_values(inputs), "network_dim": args.dim, "network_alpha": args.dim / 2,
              "max_train_steps": args.steps, "network_train_unet_only": True, "cache_text_encoder_outputs": True}
    values.pop("network_module")  # the network choice sets it
    order = []
    for _ in range(args.rounds):
        for algo in args.algos:
            order += ["LoRA", algo]
    order.append("LoRA")
    results = []
    for i, network in enumerate(order):
        toml = write_toml(folder / f"{network}.toml", {**values, "network": network})
        run_dir = folder / f"run{i:02d}_{network}"
        clock = run_dir / "steps.json"
        clock.unlink(missing_ok=True)
        load = load_average()
        print(f"[{i + 1}/{len(order)}] {network} (load {load}, {available_gb():.1f} GB available) ...", flush=True)
        cmd = [args.python, str(HERE / "step_clock.py"), str(clock), "module", "trainer", "train", "--config",
               str(toml), "--set", f"output_dir={json.dumps(str(run_dir / 'out'))}"]
        run = run_process(network, cmd, ROOT, run_dir / "train.log", run_dir / "out" / "lora.safetensors",
                          {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
        result = {"network": network, "index": i, "load_before": load, "load_after": load_average(),
                  "returncode": run.returncode, "wall_s": run.wall_s, "peak_rss_gib": run.peak_rss_gb,
                  "log": str(run.log)}
        if not run.ok or not clock.is_file():
            print(f"{network} failed (exit {run.returncode}); the end of {run.log}:\n{run.tail()}", flush=True)
            return 2
        ticks = json.loads(clock.read_text())["steps"]
        deltas = [[b - a for a, b in zip(prev, cur)] for prev, cur in zip(ticks, ticks[1:])]
        timed = deltas[max(args.warmup - 1, 0):]  # deltas[i] is step i+2
        result.update(steps=len(ticks), step_s=[d[0] for d in timed], cpu_s=[d[1] for d in timed],
                      faults=[d[2] for d in timed], file_bytes=run.lora.stat().st_size,
                      modules=modules_in(run.lora), params=params_in(run.log))
        results.append(result)
        print(f"    {statistics.median(result['step_s']):.3f} s/step, {statistics.median(result['cpu_s']):.2f} "
              f"CPU-s/step, peak RSS {run.peak_rss_gb:.2f} GiB, {result['modules']} modules, "
              f"{result['file_bytes'] / 1e6:.1f} MB", flush=True)
    text = speed_report(results, args)
    print(text)
    write_report(args.out, "adapter_costs_speed", text, results)
    return 0


def modules_in(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return count_modules(f.keys())


def params_in(log: Path) -> int | None:
    """The trainable parameter count the LyCORIS builder logs; networks.lora does not log one."""
    import re

    match = re.search(r"([\d,]+) parameters", log.read_text(encoding="utf-8", errors="replace"))
    return int(match.group(1).replace(",", "")) if match else None


def speed_report(results: list[dict], args) -> str:
    med = statistics.median
    loras = [r for r in results if r["network"] == "LoRA"]
    lora_step = med([med(r["step_s"]) for r in loras])
    lora_cpu = med([med(r["cpu_s"]) for r in loras])
    lora_rss = med([r["peak_rss_gib"] for r in loras])
    header = ["run", "network", "modules", "file MB", "s/step", "spread (min-max)", "CPU-s/step", "peak RSS GiB",
              "s/step / LoRA (neighbours)", "CPU / LoRA (all)", "RSS / LoRA", "load before"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        i = results.index(r)
        neighbours = [med(results[j]["step_s"]) for j in (i - 1, i + 1)
                      if 0 <= j < len(results) and results[j]["network"] == "LoRA"]
        rel = med(r["step_s"]) / statistics.mean(neighbours) if neighbours and r["network"] != "LoRA" else None
        lines.append("| " + " | ".join([
            str(i + 1), r["network"], str(r["modules"]), f"{r['file_bytes'] / 1e6:.1f}", f"{med(r['step_s']):.3f}",
            f"{min(r['step_s']):.2f}-{max(r['step_s']):.2f}", f"{med(r['cpu_s']):.2f}", f"{r['peak_rss_gib']:.2f}",
            f"{rel:.2f}" if rel else "-", f"{med(r['cpu_s']) / lora_cpu:.2f}", f"{r['peak_rss_gib'] / lora_rss:.2f}",
            r["load_before"]]) + " |")
    steps_lora = [round(med(r["step_s"]), 3) for r in loras]
    return "\n".join([
        f"# Step time and peak RSS per network type (full-size random SD1.5, 256², batch 1, dim {args.dim} / "
        f"alpha {args.dim / 2:g}, bf16)", "",
        f"{args.steps} steps per run, the first {args.warmup} not timed; LoRA runs between the others.", "",
        *lines, "",
        f"LoRA runs: s/step {steps_lora} (median {lora_step:.3f}), CPU-s/step median {lora_cpu:.2f}, "
        f"peak RSS median {lora_rss:.2f} GiB"]) + "\n"


def write_report(out: str, stem: str, text: str, raw) -> None:
    from trainer.atomic import write_text

    folder = Path(out).resolve()
    write_text(folder / f"{stem}.json", json.dumps(raw, indent=1))
    print(f"report: {write_text(folder / f'{stem}.md', text)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sizes", help="file size per network, family and dim")
    s.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    s.add_argument("--dims", nargs="+", type=int, default=[8, 16, 32])
    s.add_argument("--check", action="store_true", help="also save the sd15 files of the first dim and compare")
    t = sub.add_parser("speed", help="step time and peak RSS per network on full-size SD1.5")
    t.add_argument("--algos", nargs="+", choices=NETWORKS[1:], default=list(NETWORKS[1:]))
    t.add_argument("--dim", type=int, default=16)
    t.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    t.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    t.add_argument("--rounds", type=int, default=1, help="passes over --algos (LoRA between every run)")
    t.add_argument("--python", default=sys.executable, help="the python that runs our CLI")
    for sp in (s, t):
        sp.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = p.parse_args(argv)
    if args.what == "speed" and args.steps < args.warmup + 2:
        p.error("--steps must be at least --warmup + 2")
    started = time.perf_counter()
    code = run_sizes(args) if args.what == "sizes" else run_speed(args)
    print(f"({time.perf_counter() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
