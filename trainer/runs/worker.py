"""python -m trainer background --config <run>/<name>.toml: one run in its own process.

Takes the run's alive lock and waits for its device (session.py), checks the GPU memory it needs,
trains with run_status.json written every step, stops at a stop.request (state saved), then
writes the LoRA, loss chart and samples and copies the LoRA into --publish-to under a free name."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import TrainerError


def add_background_parser(sub) -> None:
    p = sub.add_parser("background", help="train one run as a background process (what LoRA Train's run_in = "
                                          "background starts): progress in <run>/run_status.json")
    p.add_argument("--config", required=True, help="the run's TOML, in its run folder")
    p.add_argument("--publish-to", help="folder the finished LoRA is copied into (never over another file)")
    p.add_argument("--parallel", action="store_true", help="do not wait for other runs on the same device")
    p.add_argument("--resume", action="store_true", help="continue from the run's saved state when there is one")
    p.set_defaults(func=background_command)


def background_command(args) -> int:
    from ..config import TrainConfig
    from ..config_files import config_from_file
    from ..progress import quiet_libraries, tqdm_callbacks
    from ..train.loop import train
    from ..train.precision import default_device
    from ..train.snapshots import save_final
    from ..train.state import state_dir
    from .queue import device_key
    from .session import run_session

    toml = Path(args.config).resolve()
    run_dir = toml.parent
    quiet_libraries()
    device = default_device()
    with run_session(run_dir, device_key(device), args.parallel, continued=True, worker_pid=os.getpid()) as status:
        if status is None:
            print("stopped while waiting for the device")
            return 0
        config = TrainConfig.from_dict(config_from_file(toml).to_dict(), source=str(toml))
        config.output_dir = str(run_dir)
        if args.resume and (state_dir(config) / "progress.json").is_file():
            config.resume = str(state_dir(config))
        problem = gpu_memory_problem(config, device)
        if problem:
            raise TrainerError(problem)
        callbacks, close = tqdm_callbacks()
        try:
            result = train(config, callbacks=status.callbacks(callbacks), device=device)
        finally:
            close()
        if result.stopped:
            status.finish("stopped")
            print(f"stopped at step {result.steps}: resume from the Training panel")
            return 0
        files = save_final(result, config)
        published = publish(files["lora"], Path(args.publish_to), config.output_name) if args.publish_to else None
        status.finish("done", lora=str(published or files["lora"]), output=str(files["lora"]),
                      loss_chart=Path(files["loss_chart"]).name)
        print(f"done: LoRA {published or files['lora']}")
    return 0


def gpu_memory_problem(config, device) -> str | None:
    """What to change when the run's estimated GPU memory exceeds what is free on ``device``."""
    if device.type != "cuda":
        return None
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return memory_problem(config, free)


def memory_problem(config, free_bytes: int) -> str | None:
    """Our estimate (train/vram.py) against ``free_bytes``: None when it fits, else the reason the
    run does not start, naming the settings that would make it fit."""
    from ..train.vram import vram_warning
    from ..train.vram_cli import config_family

    warning = vram_warning(config, config_family(config), free_bytes)
    return f"Not started: {warning}. Free GPU memory (close other runs or unload models) or change those settings." \
        if warning else None


def publish(lora: Path, folder: Path, stem: str) -> Path:
    """Copy the LoRA into ``folder`` as <stem>.safetensors, or <stem>_1 ... when that name is taken:
    a file there is never replaced (LoRA Save's rule)."""
    import tempfile

    from ..names import free_file

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        shutil.copyfile(lora, tmp)
        while True:
            target = free_file(folder, stem)
            try:
                os.link(tmp, target)  # fails if the name was taken meanwhile: never over another file
                return target
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links
                if not target.exists():
                    os.replace(tmp, target)
                    return target
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
