"""Speed levers of the training step, A/B in one process: what each changes against the step as
train() runs it.

    python bench/step_levers.py --full --family sdxl --rounds 8
    python bench/step_levers.py --quick --compile      # adds torch.compile (minutes of compiling)

One model, one prepared batch (as bench/floor.py), the LoRA on it. First the step train() runs
("as trained": LoRA inputs not up-cast, fused AdamW) with glibc's malloc as a fresh process has
it ("glibc defaults": big blocks freed each step come back as page faults the next), then the
rest inside trainer.train.host_memory.reuse_freed_memory as train() runs its steps. There the
variants take turns step by step (the order flips every round), so a slower or faster stretch of
a shared machine falls on all of them alike. Each is "as trained" with one thing changed:

  peft up-casts      peft's fp32 round trip of every LoRA layer's input (what train() skips)
  per-tensor AdamW   torch AdamW's default loop over tensors instead of the fused kernel
  channels-last      the UNet's convolutions and the input in channels-last memory format
  math attention     scaled_dot_product_attention's plain math kernel instead of the fused one
  torch.compile      the UNet through torch.compile (inductor); its compile time is printed apart

Prints the median seconds per step (wall and process CPU), minor page faults per step, the
optimizer's share and the ratio to "as trained". CPU only.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_setup import FULL, TINY, Spec, ensure_dataset, ensure_model  # noqa: E402

VARIANTS = ("as trained", "peft up-casts", "per-tensor AdamW", "channels-last", "math attention")


class Bench:
    """The model, its LoRA, one prepared batch and a step that can take each variant."""

    def __init__(self, spec: Spec):
        import floor
        from bench_run import load, training_lora
        from trainer.data.dataset import load_dataset
        from trainer.lora.network import autocast_lora_inputs
        from trainer.train.optim import build_optimizer

        self.model, plain = load(spec)
        draws, self.kwargs = floor.prepare(self.model, load_dataset(spec.data), spec.resolution, spec.batch, 1)
        self.noisy, self.target, self.t = draws[0]
        params = training_lora(self.model, spec.rank)
        self.autocast = {"as trained": autocast_lora_inputs(plain, self.model.unet), "peft up-casts": plain}
        quiet = {"log": lambda _: None}
        self.optimizers = {"fused": build_optimizer("AdamW", params, 1e-4, None, "cpu", **quiet),
                           "loop": build_optimizer("AdamW", params, 1e-4, ["foreach=False"], "cpu", **quiet)}
        self.unets = {"eager": self.model.unet}
        self.channels_last = False
        self.model.unet.train()

    def compile(self) -> float:
        import torch

        self.unets["compiled"] = torch.compile(self.model.unet)
        started = time.perf_counter()
        self.step("torch.compile")
        return time.perf_counter() - started

    def _memory_format(self, channels_last: bool) -> None:
        import torch

        if channels_last != self.channels_last:  # converted outside the clock
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self.model.unet.to(memory_format=fmt)
            self.noisy = self.noisy.contiguous(memory_format=fmt)
            self.channels_last = channels_last

    def step(self, variant: str) -> tuple[float, float, float, int]:
        """(wall s, process CPU s, optimizer s, minor page faults) of one step of ``variant``."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        import floor

        self._memory_format(variant == "channels-last")
        autocast = self.autocast.get(variant, self.autocast["as trained"])
        optimizer = self.optimizers["loop" if variant == "per-tensor AdamW" else "fused"]
        unet = self.unets["compiled" if variant == "torch.compile" else "eager"]
        attention = sdpa_kernel(SDPBackend.MATH) if variant == "math attention" else contextlib.nullcontext()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        with attention:
            optimizer_seconds = floor.step(unet, self.noisy, self.target, self.t, self.kwargs, optimizer, autocast)
        return (time.perf_counter() - wall, time.process_time() - cpu, optimizer_seconds,
                resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny model, 64² batch 2 (default)")
    size.add_argument("--full", action="store_true", help="full-size random bf16 model, 256² batch 1")
    parser.add_argument("--family", choices=["sd15", "sdxl", "kolors"], default="sd15")
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per variant (after one warm-up each)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (inductor; needs a C++ compiler)")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="models and data (shared with train_step.py)")
    args = parser.parse_args()
    if args.full and args.family == "kolors":
        raise SystemExit("Full-size random models exist for sd15 and sdxl only.")
    shape, kind = (FULL, "full") if args.full else (TINY, "quick")
    out = args.out.resolve()
    model = ensure_model(args.family, "full" if args.full else "tiny", out)
    data = ensure_dataset(out / f"data_{kind}", 4 * shape["batch"], shape["resolution"])
    spec = Spec(args.family, str(model), str(data), shape["resolution"], shape["batch"], 1, 1, "bf16",
                str(out / "runs" / "levers"))
    from trainer.progress import quiet_libraries

    quiet_libraries()
    import torch

    from trainer.train.host_memory import reuse_freed_memory

    bench = Bench(spec)
    for _ in range(2):
        bench.step("as trained")  # warm-up
    times: dict[str, list] = {"glibc defaults": [bench.step("as trained") for _ in range(args.rounds)]}
    variants = list(VARIANTS)
    with reuse_freed_memory(torch.device("cpu")):
        if args.compile:
            print(f"torch.compile: compiling and the first step took {bench.compile():.1f} s", flush=True)
            variants.append("torch.compile")
        for variant in variants:
            bench.step(variant)  # warm-up
        times.update({v: [] for v in variants})
        for round_ in range(args.rounds):
            for variant in variants if round_ % 2 == 0 else variants[::-1]:
                times[variant].append(bench.step(variant))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    report(args, spec, shape, kind, times)


def report(args, spec: Spec, shape: dict, kind: str, times: dict[str, list]) -> None:
    base = statistics.median(t[0] for t in times["as trained"])
    print(f"\n{args.family} ({kind}, {shape['resolution']}², batch {shape['batch']}, bf16, LoRA rank {spec.rank}), "
          f"median of {args.rounds} steps each (glibc defaults: before the others; the rest interleaved):")
    print(f"{'variant':<18} {'s/step':>7} {'CPU s':>7} {'faults':>8} {'AdamW ms':>9} {'/ as trained':>13}")
    for variant, rows in times.items():
        wall, cpu, opt, faults = (statistics.median(t[i] for t in rows) for i in range(4))
        print(f"{variant:<18} {wall:7.3f} {cpu:7.3f} {faults:8.0f} {opt * 1000:9.1f} {wall / base:13.3f}")


if __name__ == "__main__":
    main()
