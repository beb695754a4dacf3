"""kohya's batches per epoch for a dataset config, from kohya's own code, beside ours.

    python bench/kohya_dataset_steps.py --kohya /path/to/sd-scripts --python /path/to/kohya/python \
        [dataset.toml]

Without a dataset.toml, tests/test_dataset_config.py's example is written to a temp folder. kohya's
side runs in its own process (its python, its checkout on the path): config_util's
BlueprintGenerator + generate_dataset_group_by_blueprint, then len(DatasetGroup), which is
kohya's batches per epoch (its DataLoader takes one dataset item, a whole batch, at a time), and
each dataset's bucket counts. Ours: load_dataset_config + steps_per_epoch. No model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

KOHYA_SIDE = r"""
import json, sys
sys.argv = ["train_network.py"]
import train_network
from library import config_util, strategy_base, strategy_sd, train_util
toml, resolution = sys.argv_dataset
args = train_network.setup_parser().parse_args(["--dataset_config", toml, "--resolution", resolution,
                                                "--caption_extension", ".txt"])
train_util.prepare_dataset_args(args, True)
strategy_base.LatentsCachingStrategy.set_strategy(strategy_sd.SdSdxlLatentsCachingStrategy(True, False, 1, True))
user = config_util.load_user_config(toml)
blueprint = config_util.BlueprintGenerator(config_util.ConfigSanitizer(True, True, False, True)).generate(user, args)
group, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
out = {"batches_per_epoch": len(group), "datasets": []}
for ds in group.datasets:
    buckets = {str(tuple(reso)): len(b) for reso, b in zip(ds.bucket_manager.resos, ds.bucket_manager.buckets) if b}
    out["datasets"].append({"resolution": [ds.width, ds.height], "batch_size": ds.batch_size, "batches": len(ds),
                            "num_train_images": ds.num_train_images, "num_reg_images": ds.num_reg_images,
                            "buckets": buckets})
print("RESULT " + json.dumps(out))
"""


def kohya_count(kohya: Path, python: str, toml: Path, resolution: str) -> dict:
    code = KOHYA_SIDE.replace("sys.argv_dataset", repr([str(toml), resolution]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(kohya), os.environ.get("PYTHONPATH")])))
    run = subprocess.run([python, "-c", code], cwd=kohya, env=env, capture_output=True, text=True)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"kohya failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def our_count(toml: Path, resolution: str) -> dict:
    from trainer.config import TrainConfig
    from trainer.train.bucketing import assign_buckets, steps_per_epoch

    from trainer.data.kohya_dataset_config import load_dataset_config

    config = TrainConfig(resolution=resolution, caption_extension=".txt")
    data = load_dataset_config(toml, config)
    return {"batches_per_epoch": steps_per_epoch(data, assign_buckets(data, config), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_config", nargs="?")
    parser.add_argument("--kohya", required=True, help="kohya-ss/sd-scripts checkout")
    parser.add_argument("--python", required=True, help="a python that can import kohya")
    parser.add_argument("--resolution", default="64", help="the training config's resolution (the fallback)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset_config:
            toml = Path(args.dataset_config).resolve()
        else:
            from test_dataset_config import write_example

            toml = write_example(Path(tmp))
        # kohya reads relative image_dir from its working directory: give it absolute paths
        text = toml.read_text(encoding="utf-8")
        for key in ("image_dir", "metadata_file"):
            text = text.replace(f'{key} = "', f'{key} = "{toml.parent.as_posix()}/')
        absolute = Path(tmp) / "kohya_dataset.toml"
        absolute.write_text(text.replace(f"{toml.parent.as_posix()}//", "/"), encoding="utf-8")
        theirs = kohya_count(Path(args.kohya), args.python, absolute, args.resolution)
        ours = our_count(toml, args.resolution)
    print(json.dumps({"kohya": theirs, "ours": ours}, indent=1))
    return 0 if theirs["batches_per_epoch"] == ours["batches_per_epoch"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
