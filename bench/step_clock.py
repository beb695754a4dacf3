"""Run a trainer in this process and note when each of its optimizer steps ends.

    python bench/step_clock.py OUT.json script PATH [ARGS...]   # e.g. kohya's train_network.py
    python bench/step_clock.py OUT.json module NAME [ARGS...]   # python -m NAME (our trainer)

torch's global optimizer step post-hook fires after every ``step()`` of any torch optimizer in the
process, so kohya's training loop and ours are timed by the same instrument without touching
either: wall clock, CPU time (both threads) and minor page faults at the end of each step. The
time between two consecutive step ends is one whole training step (data, forward, backward,
optimizer, the loop's bookkeeping). OUT.json gets the readings when the process ends.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import runpy
import sys
import time


def main() -> None:
    out, kind, target, *args = sys.argv[1:]
    ticks: list[list[float]] = []
    started = time.perf_counter()

    def on_step(optimizer, *_):
        if type(optimizer).__module__.startswith("accelerate"):  # a wrapper: its inner optimizer ticks
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        ticks.append([time.perf_counter() - started, time.process_time(), usage.ru_minflt])

    def dump():
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"steps": ticks, "wall_s": time.perf_counter() - started}, f)
        os.replace(out + ".tmp", out)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)
    atexit.register(dump)
    sys.path.pop(0)  # this folder: the trainer imports as if started itself
    if kind == "script":
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")
    else:  # as ``python -m``: the working folder first on the path
        sys.path.insert(0, os.getcwd())
        sys.argv = [target, *args]
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
