"""LoRA Train's run_in: train in this graph (holding the queue) or in a background process.

Both kinds of run write output/lora_trainer/<name>/run_status.json (trainer/runs/), so the
Training sidebar lists them together and its Stop works on both; a background run also leaves
the queue at once and copies its LoRA into models/loras when it finishes."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..trainer.errors import TrainerError
from . import comfy_env

RUN_IN = ["this graph", "background", "background (parallel)"]
RUN_IN_TIP = ("this graph: train now, the queue waits (Cancel stops). background: a separate process trains from "
              "the run's TOML; the queue is free at once, the Training sidebar shows progress, Stop and Resume, "
              "and the LoRA goes into models/loras when done. One run per device at a time; "
              "background (parallel) starts without waiting for other runs.")


def runs_root() -> Path:
    return comfy_env.output_dir() / "lora_trainer"


def start_in_background(config, toml: Path, pipeline, run_in: str, outputs: int, headless_text: str) -> dict:
    """Launch the run's process; the node's result blocks the nodes after it (no LoRA yet)."""
    from ..trainer.names import free_file
    from ..trainer.runs.launch import start_background

    source = Path(str(pipeline.source))
    if not source.exists():
        raise TrainerError("A background run loads its model from a file, and this model has none "
                           f"({pipeline.source}): load it with CheckpointLoaderSimple or Kolors/SDXL Loader, "
                           "or set run_in to 'this graph'.")
    loras = comfy_env.model_folders("loras")[0]
    status = start_background(toml, publish_to=loras, parallel=run_in == "background (parallel)",
                              resume=bool(config.resume))
    lora = free_file(loras, config.output_name)
    lines = [f"Training in the background: run '{status['id']}'" + (" (resuming)" if config.resume else ""),
             f"run folder: {toml.parent}", f"log: {toml.parent / status['log']}",
             f"the LoRA will be saved as {lora} (a free name is taken if that one exists by then)",
             "Progress, Stop and Resume: the Training tab in the sidebar.", "", headless_text]
    print(lines[0])
    return {"ui": {"text": ["\n".join(lines)]}, "result": comfy_env.blocked_outputs(outputs)}


@contextlib.contextmanager
def graph_run(run_dir: Path, pipeline):
    """This graph's run as a run of the Training panel: waits while another run has the device
    (Cancel works meanwhile); yields its RunStatus."""
    from ..trainer.runs.queue import device_key
    from ..trainer.runs.session import run_session

    with run_session(run_dir, device_key(comfy_env.device()), should_stop=comfy_env.interrupted, mode="graph",
                     model=str(pipeline.source)) as status:
        if status is None:
            comfy_env.raise_if_interrupted()
            raise TrainerError(f"Run '{Path(run_dir).name}' was stopped from the Training panel while it waited "
                               "for the device.")
        yield status
