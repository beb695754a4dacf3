"""The CLI command that runs a LoRA Train node's training headless, on one GPU or several.

The node writes its resolved settings as <run>/<name>.toml and the dataset exactly as the graph
prepared it (captions edited in memory, Smart Crop files, repeats) as <run>/<name>_dataset.jsonl,
and shows the commands that train the same LoRA with ``python -m trainer``, ``torchrun`` or
``accelerate launch``, so a graph's training can move to a bigger machine.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]


def write_headless_run(config, dataset, run_dir: Path, model_settings: dict | None = None,
                       model_note: str = "") -> tuple[Path, str]:
    """Write the TOML + dataset manifest; return (toml path, the text the node shows).
    ``model_settings``: config values the CLI needs to load the same model (vae, tokenizer_dir...)."""
    from ..trainer.atomic import write_text
    from ..trainer.data.manifest import write_manifest
    from ..trainer.names import inside

    name = config.output_name  # made safe by TrainConfig
    manifest = write_manifest(dataset, inside(run_dir, f"{name}_dataset.jsonl"))
    # the manifest already holds the regularization images; resume is the node's own business
    headless = dataclasses.replace(config, dataset_manifest=str(manifest), train_data_dir="", reg_data_dir="",
                                   resume="", **(model_settings or {}))
    toml = write_text(inside(run_dir, f"{name}.toml"), headless.to_toml())
    lines = [f'Same training headless: cd "{PACK_DIR}", then one of',
             f'  python -m trainer train --config "{toml}"',
             f'  torchrun --nproc_per_node <GPUs> -m trainer train --config "{toml}"',
             f'  accelerate launch --multi_gpu --num_processes <GPUs> -m trainer train --config "{toml}"',
             "Each process takes train_batch_size images per step: N GPUs train N x the batch "
             "(README: Multi-GPU)."]
    if model_note:
        lines.append(model_note)
    return toml, "\n".join(lines)
