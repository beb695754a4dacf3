"""Several processes (torchrun / accelerate launch, gloo on the CPU) train exactly what one
process trains with the global batch, and only rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import ROOT
from trainer.train.distributed import Distributed
from trainer.train.state import Progress, batches_done

# measured on the tiny SD1.5, 6 steps, 2 processes x batch 1 vs 1 process x batch 2: with SGD
# (updates linear in the gradient) max |difference| of any LoRA tensor 1.5e-8, float sums in
# another order; asserted 1e-6. AdamW (lr 1e-3) differs by 9.3e-5 on the same run: it divides each
# gradient by its own running magnitude, so rounding noise on near-zero gradients becomes a full
# lr-sized step. The tests use SGD to see the gradient arithmetic itself.
TOLERANCE = 1e-6


def launch(launcher: str, procs: int, config, *sets, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    elif launcher == "accelerate":
        # --multi_gpu picks accelerate's torchrun-based launcher; on a machine without GPUs the
        # processes join over gloo (its --cpu launcher would need MPI)
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(procs),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        cmd = [sys.executable]
    cmd += ["-m", "trainer", "train", "--config", str(config)] + [a for s in sets for a in ("--set", s)]
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture
def two_bucket_dataset(tmp_path):
    """3 square and 2 wide images: with buckets, batches never mix them, and a global batch of 2
    leaves one process without an item in the square bucket's last batch."""
    folder = tmp_path / "data" / "1_ltdemo"
    folder.mkdir(parents=True)
    for i, (size, colour) in enumerate([((64, 64), (200, 30, 30)), ((64, 64), (30, 200, 30)),
                                        ((64, 64), (30, 30, 200)), ((128, 64), (200, 200, 30)),
                                        ((128, 64), (30, 200, 200))]):
        img = Image.new("RGB", size, colour)
        img.paste((255, 255, 255), (8 + 4 * i, 8, 30 + 4 * i, 40))
        img.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"ltdemo, shape {i}, plain background, tag{i}")
    return folder.parent


def write_config(path, model, data, out, **extra):
    values = dict(pretrained_model_name_or_path=str(model), train_data_dir=str(data), output_dir=str(out),
                  output_name="dist", resolution="64", enable_bucket=True, bucket_reso_steps=32,
                  min_bucket_reso=32, max_bucket_reso=128, network_dim=4, network_alpha=4, conv_dim=4,
                  optimizer_type="SGD", learning_rate=0.5, max_train_epochs=2, shuffle_caption=True, flip_aug=True, noise_offset=0.05,
                  lr_scheduler="constant", seed=7, save_every_n_epochs=1, save_precision="fp32",
                  sample_prompts=["ltdemo --d 2 --s 2 --w 64 --h 64"])
    values.update(extra)
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items()) + "\n")
    return path


def max_difference(a, b) -> float:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max((left[k].float() - right[k].float()).abs().max().item() for k in left)


def test_two_processes_equal_one_with_the_doubled_batch(tiny_models, two_bucket_dataset, tmp_path):
    model = tiny_models("sd15")
    one = launch("python", 1, write_config(tmp_path / "one.toml", model, two_bucket_dataset, tmp_path / "one",
                                           train_batch_size=2))
    two = launch("torchrun", 2, write_config(tmp_path / "two.toml", model, two_bucket_dataset, tmp_path / "two",
                                             train_batch_size=1))
    # square bucket: 3 items -> batches of 2 and 1; wide: 2 -> 1 batch; 3 steps x 2 epochs
    assert "done: 6 steps" in one.stdout and "done: 6 steps" in two.stdout
    assert two.stdout.count("done: ") == 1 and two.stdout.count("images x repeats") == 1  # rank 0 logs
    assert "batch 1 x 2 processes -> 6 steps" in two.stdout
    assert max_difference(tmp_path / "one" / "dist.safetensors", tmp_path / "two" / "dist.safetensors") <= TOLERANCE
    losses = [[float(line.split(",")[1]) for line in (tmp_path / d / "dist_loss.csv").read_text().splitlines()[1:]]
              for d in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # rank 0 alone wrote: one epoch file, one set of samples, no stray temp files
    names = sorted(p.name for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert names == sorted(p.name for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]


def test_resume_with_another_process_count(tiny_models, two_bucket_dataset, tmp_path):
    """2 processes save a state after epoch 1; 1 process with the same global batch resumes it
    and ends exactly where an uninterrupted 1-process run ends."""
    model = tiny_models("sd15")
    whole = launch("python", 1, write_config(tmp_path / "whole.toml", model, two_bucket_dataset, tmp_path / "whole",
                                             train_batch_size=2))
    first = write_config(tmp_path / "first.toml", model, two_bucket_dataset, tmp_path / "part", train_batch_size=1,
                         max_train_epochs=1, save_state=True)
    launch("torchrun", 2, first)
    state = tmp_path / "part" / "dist-state"
    assert json.loads((state / "progress.json").read_text())["global_batch"] == 2
    resumed = launch("python", 1, first, "train_batch_size=2", "max_train_epochs=2", f'resume="{state}"')
    assert "resumed from" in resumed.stdout and "done: 6 steps" in resumed.stdout
    assert max_difference(tmp_path / "whole" / "dist.safetensors", tmp_path / "part" / "dist.safetensors") <= TOLERANCE


def test_accelerate_launch_runs_the_same_config(tiny_models, two_bucket_dataset, tmp_path):
    model = tiny_models("sd15")
    torchrun = launch("torchrun", 2, write_config(tmp_path / "t.toml", model, two_bucket_dataset, tmp_path / "t",
                                                  train_batch_size=1, max_train_epochs=1))
    accel = launch("accelerate", 2, write_config(tmp_path / "a.toml", model, two_bucket_dataset, tmp_path / "a",
                                                 train_batch_size=1, max_train_epochs=1))
    assert "batch 1 x 2 processes -> 3 steps" in accel.stdout
    assert max_difference(tmp_path / "t" / "dist.safetensors", tmp_path / "a" / "dist.safetensors") <= TOLERANCE
    assert "done: 3 steps" in torchrun.stdout


def test_each_rank_takes_a_contiguous_share_of_every_global_batch():
    for world in (1, 2, 3, 4):
        for count in range(0, 9):
            parts = [Distributed(rank, world).my_slice(count) for rank in range(world)]
            covered = [i for part in parts for i in range(count)[part]]
            assert covered == list(range(count))  # every item once, in order
            sizes = [len(range(count)[part]) for part in parts]
            assert max(sizes) - min(sizes) <= 1


def test_resuming_with_another_global_batch_skips_the_samples_already_done():
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches_done(batches, Progress(position=1, samples=4, global_batch=4), 4) == 1  # same batching
    assert batches_done(batches, Progress(position=4, samples=8, global_batch=2), 4) == 2  # 4 x 2 = 2 x 4
    assert batches_done(batches, Progress(position=3, samples=6, global_batch=2), 4) == 1  # inside a batch
    assert batches_done(batches, Progress(position=2, samples=2), None) == 2  # an old state: positions

