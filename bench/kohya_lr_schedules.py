"""kohya's learning-rate curves and optimizer classes, from kohya's own code, beside ours.

    python bench/kohya_lr_schedules.py --kohya /path/to/sd-scripts --python /path/to/kohya/python \
        [--kohya-path extra/dirs/for/kohya's/imports]

kohya's side runs in its own process (its python, its checkout on the path): train_network's
parser reads each case's options as the command line would, then train_util.get_optimizer and
get_scheduler_fix build them over one parameter at learning rate 1.0, and the curve is the lr at
each step. Ours: trainer.train.optim.build_optimizer + lr_schedule.build_lr_scheduler with the
same options as a TrainConfig. Exit status 1 when any curve differs by more than 1e-9 or any
optimizer class differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 100
# (label, kohya command-line options); every case trains STEPS steps at learning rate 1.0
SCHEDULES = [
    ("constant", []),
    ("constant_with_warmup", ["--lr_scheduler", "constant_with_warmup", "--lr_warmup_steps", "10"]),
    ("linear, warmup ratio", ["--lr_scheduler", "linear", "--lr_warmup_steps", "0.1"]),
    ("cosine", ["--lr_scheduler", "cosine", "--lr_warmup_steps", "5"]),
    ("cosine, warmup longer than the run", ["--lr_scheduler", "cosine", "--lr_warmup_steps", "150"]),
    ("cosine_with_restarts x3", ["--lr_scheduler", "cosine_with_restarts", "--lr_scheduler_num_cycles", "3",
                                 "--lr_warmup_steps", "5"]),
    ("polynomial power 2, lr_end", ["--lr_scheduler", "polynomial", "--lr_scheduler_power", "2",
                                    "--lr_scheduler_args", "lr_end=0.1"]),
    ("inverse_sqrt", ["--lr_scheduler", "inverse_sqrt", "--lr_warmup_steps", "10"]),
    ("inverse_sqrt timescale", ["--lr_scheduler", "inverse_sqrt", "--lr_warmup_steps", "10",
                                "--lr_scheduler_timescale", "30"]),
    ("cosine_with_min_lr", ["--lr_scheduler", "cosine_with_min_lr", "--lr_warmup_steps", "5",
                            "--lr_scheduler_min_lr_ratio", "0.1"]),
    ("cosine_with_min_lr x2", ["--lr_scheduler", "cosine_with_min_lr", "--lr_scheduler_num_cycles", "2",
                               "--lr_scheduler_min_lr_ratio", "0.2"]),
    ("warmup_stable_decay", ["--lr_scheduler", "warmup_stable_decay", "--lr_warmup_steps", "10",
                             "--lr_decay_steps", "0.3", "--lr_scheduler_min_lr_ratio", "0.05"]),
    ("piecewise_constant", ["--lr_scheduler", "piecewise_constant", "--lr_scheduler_args",
                            "step_rules='1:20,0.5:50,0.1'"]),
    ("lr_scheduler_type CosineAnnealingLR", ["--lr_scheduler_type", "CosineAnnealingLR", "--lr_scheduler_args",
                                             "T_max=50"]),
    ("lr_scheduler_type module.Class", ["--lr_scheduler_type", "torch.optim.lr_scheduler.StepLR",
                                        "--lr_scheduler_args", "step_size=10", "gamma=0.5"]),
    ("Adafactor's own", ["--optimizer_type", "Adafactor"]),
    ("schedule-free: kohya's dummy", ["--optimizer_type", "AdamWScheduleFree", "--lr_scheduler", "cosine"]),
]
OPTIMIZERS = ["AdamW", "AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Lion", "Lion8bit",
              "PagedLion8bit", "SGDNesterov", "SGDNesterov8bit", "DAdaptation", "DAdaptAdamPreprint", "DAdaptAdaGrad",
              "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptLion", "DAdaptSGD", "Prodigy", "AdaFactor",
              "RAdamScheduleFree", "AdamWScheduleFree", "SGDScheduleFree", "RAdam", "torch.optim.NAdam",
              "bitsandbytes.optim.AdEMAMix8bit"]

KOHYA_SIDE = r"""
import json, sys
import torch
cases, optimizers, steps = sys.argv_cases
sys.argv = ["train_network.py"]
import train_network
from library import train_util
parser = train_network.setup_parser()
out = {"curves": {}, "optimizers": {}}

def build(options):
    args = parser.parse_args(["--learning_rate", "1.0", "--max_train_steps", str(steps)] + options)
    name, _, optimizer = train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(4096))])
    return args, name, optimizer

for label, options in cases:
    try:
        args, _, optimizer = build(options)
        scheduler = train_util.get_scheduler_fix(args, optimizer, 1)
        curve = []
        for _ in range(steps):
            curve.append(float(scheduler.get_last_lr()[0]))
            optimizer.step()
            scheduler.step()
        out["curves"][label] = curve
    except Exception as err:
        out["curves"][label] = f"{type(err).__name__}: {err}"
for name in optimizers:
    try:
        out["optimizers"][name] = build(["--optimizer_type", name])[1]
    except Exception as err:
        out["optimizers"][name] = f"{type(err).__name__}: {err}"
print("RESULT " + json.dumps(out))
"""


def kohya_side(kohya: Path, python: str, extra_path: str = "") -> dict:
    code = KOHYA_SIDE.replace("sys.argv_cases", repr((SCHEDULES, OPTIMIZERS, STEPS)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(kohya), extra_path,
                                                                    os.environ.get("PYTHONPATH")])))
    run = subprocess.run([python, "-c", code], cwd=kohya, env=env, capture_output=True, text=True)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"kohya failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def _config(options: list[str]):
    """A TrainConfig from kohya command-line options (the ones SCHEDULES uses)."""
    from trainer.config import TrainConfig

    values, key = {}, None
    for item in options:
        if item.startswith("--"):
            key = item[2:]
            values[key] = [] if key == "lr_scheduler_args" else None
        elif key == "lr_scheduler_args":
            values[key].append(item)
        else:
            values[key] = item
    config = TrainConfig(learning_rate=1.0, max_train_steps=STEPS, **values)._coerced()
    if "lr_warmup_steps" in values and float(values["lr_warmup_steps"]) >= 1:  # the CLI's int
        config.lr_warmup_steps = int(config.lr_warmup_steps)
    return config


def our_side() -> dict:
    import torch

    from trainer.train.lr_schedule import lr_curve, schedule_for
    from trainer.train.optim import build_optimizer

    out = {"curves": {}, "optimizers": {}}
    for label, options in SCHEDULES:
        config = _config(options)
        try:
            optimizer = build_optimizer(config.optimizer_type, [torch.nn.Parameter(torch.zeros(4096))], 1.0,
                                        config.optimizer_args, "cpu", log=lambda m: None)
            out["curves"][label] = lr_curve(schedule_for(config, optimizer, STEPS, log=lambda m: None), STEPS)
        except Exception as err:
            out["curves"][label] = f"{type(err).__name__}: {err}"
    for name in OPTIMIZERS:
        try:
            cls = type(build_optimizer(name, [torch.nn.Parameter(torch.zeros(4096))], 1.0, [], "cpu",
                                       log=lambda m: None))
            out["optimizers"][name] = f"{cls.__module__}.{cls.__name__}"
        except Exception as err:
            out["optimizers"][name] = f"{type(err).__name__}: {err}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kohya", required=True, help="kohya-ss/sd-scripts checkout")
    parser.add_argument("--python", required=True, help="a python that can import kohya")
    parser.add_argument("--kohya-path", default="", help="more import paths for kohya's process only")
    args = parser.parse_args()
    theirs, ours = kohya_side(Path(args.kohya), args.python, args.kohya_path), our_side()
    failures = 0
    for label, _ in SCHEDULES:
        a, b = theirs["curves"][label], ours["curves"][label]
        if isinstance(a, str) or isinstance(b, str):
            same = isinstance(a, str) == isinstance(b, str)
            print(f"{'ok  ' if same else 'DIFF'} {label}: kohya {a if isinstance(a, str) else 'runs'}; "
                  f"ours {b if isinstance(b, str) else 'runs'}")
        else:
            diff = max(abs(x - y) for x, y in zip(a, b))
            same = diff <= 1e-9
            print(f"{'ok  ' if same else 'DIFF'} {label}: max |lr difference| {diff:.2e} "
                  f"(kohya first/last {a[0]:.4g}/{a[-1]:.4g})")
        failures += not same
    for name in OPTIMIZERS:
        a, b = theirs["optimizers"][name], ours["optimizers"][name]
        same = a == b
        print(f"{'ok  ' if same else 'DIFF'} optimizer {name}: kohya {a}; ours {b}")
        failures += not same
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
