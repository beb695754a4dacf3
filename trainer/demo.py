"""The demo: train-then-generate on a tiny built-in model, fully offline, in about a minute.

Builds a tiny model, paints a small dataset (a yellow star on blue, captioned with the trigger
word "ltdemo"), samples before training, trains a LoRA, saves it, reloads the model from disk,
applies the saved file and samples again with the same seed, then writes a loss chart.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import save_image, write_text

TRIGGER = "ltdemo"
SIZE = 64


def paint_dataset(folder: Path, count: int = 4) -> Path:
    """A few variations of one motif, kohya layout: <folder>/10_ltdemo/NN.png + NN.txt."""
    sub = folder / f"10_{TRIGGER}"
    sub.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.new("RGB", (96, 96), (30, 60 + 20 * i, 160))
        draw = ImageDraw.Draw(img)
        cx, cy, r = 40 + 5 * i, 44 + 3 * i, 26
        radii = [r if k % 2 == 0 else r / 2 for k in range(10)]
        angles = [math.radians(k * 36 - 90) for k in range(10)]
        star = [(cx + rad * math.cos(a), cy + rad * math.sin(a)) for rad, a in zip(radii, angles)]
        draw.polygon(star, fill=(250, 210, 40))
        save_image(sub / f"{i:02d}.png", img)
        write_text(sub / f"{i:02d}.txt", f"{TRIGGER}, a yellow star, blue background")
    return folder


def side_by_side(before: Image.Image, after: Image.Image, scale: int = 4) -> Image.Image:
    w, h = before.size
    out = Image.new("RGB", (2 * w * scale + 8, h * scale), (255, 255, 255))
    out.paste(before.resize((w * scale, h * scale), Image.Resampling.NEAREST), (0, 0))
    out.paste(after.resize((w * scale, h * scale), Image.Resampling.NEAREST), (w * scale + 8, 0))
    return out


def latent_distances(model, config, prompt: str, sample_args: dict) -> tuple[float, float]:
    """Mean distance from sampled latents to the nearest training latent, LoRA off and on."""
    from .data.dataset import load_dataset
    from .sample import generate
    from .train.evaluate import dataset_latents

    targets = dataset_latents(model, load_dataset(config.train_data_dir), SIZE, SIZE)
    result = []
    for strength in (0.0, 1.0):
        dists = []
        for seed in range(4):
            args = dict(sample_args, seed=seed, cfg=1.0)
            latent = generate(model, prompt, lora_strength=strength, output_type="latent", **args)[0]
            dists.append(min(float(((latent - t) ** 2).mean()) for t in targets))
        result.append(sum(dists) / len(dists))
    return result[0], result[1]


def run_demo(out: Path, family: str = "kolors", epochs: int = 12) -> dict[str, Path]:
    from .config import TrainConfig
    from .lora.apply import apply_lora
    from .models.loader import load_model
    from .progress import quiet_libraries, tqdm_callbacks
    from .sample import generate
    from .tiny.build import write_tiny_model
    from .train.loop import save_outputs, train

    quiet_libraries()
    started = time.time()
    out = Path(out).resolve()
    print(f"[1/5] building a tiny {family} model in {out / 'model'}")
    model_dir = write_tiny_model(family, out / "model")
    data_dir = paint_dataset(out / "dataset")
    config = TrainConfig(
        pretrained_model_name_or_path=str(model_dir), model_family=family, train_data_dir=str(data_dir),
        resolution=str(SIZE), network_dim=8, network_alpha=8, conv_dim=8, conv_alpha=8, learning_rate=3e-3, max_train_epochs=epochs,
        train_batch_size=2, seed=7, output_dir=str(out / "lora"), output_name=f"{TRIGGER}_{family}",
        class_tokens=TRIGGER, sample_prompts=[f"{TRIGGER}, a yellow star, blue background"])
    write_text(out / "run.toml", config.to_toml())
    prompt = config.sample_prompts[0]
    sample_args = dict(seed=1, steps=20, cfg=5.0, width=SIZE, height=SIZE, sampler="euler")

    print("[2/5] sampling before training")
    model = load_model(model_dir, family)
    before = generate(model, prompt, **sample_args)
    print(f"[3/5] training (same as: python -m trainer train --config {out / 'run.toml'})")
    callbacks, close = tqdm_callbacks()
    try:
        result = train(config, model=model, callbacks=callbacks)
    finally:
        close()
    files = save_outputs(result, config)

    print("[4/5] reloading the model from disk and applying the saved LoRA file")
    fresh = load_model(model_dir, family)
    apply_lora(fresh, files["lora"], strength=1.0)
    after = generate(fresh, prompt, **sample_args)
    closeness = latent_distances(fresh, config, prompt, sample_args)
    samples = out / "samples"
    files["sample_before"] = save_image(samples / "before.png", before)
    files["sample_after"] = save_image(samples / "after.png", after)
    files["before_after"] = save_image(samples / "before_after.png", side_by_side(before, after))

    print("[5/5] done in %.0f s: %d steps at %.3f s/step, loss %.4f -> %.4f (first/last 10-step mean)" % (
        time.time() - started, result.steps, result.seconds_per_step,
        sum(result.losses[:10]) / len(result.losses[:10]), sum(result.losses[-10:]) / len(result.losses[-10:])))
    print("  sampled latents vs the training images' latents (mean squared distance, 4 seeds): "
          "without LoRA %.2f, with LoRA %.2f" % closeness)
    print("  (the tiny model's VAE has random weights, so decoded pictures look like noise either way; "
          "the distance shows what the LoRA learned)")
    width = max(len(k) for k in files)
    for name, path in files.items():
        print(f"  {name.ljust(width)}  {path}")
    print(f"  {'config'.ljust(width)}  {out / 'run.toml'}")
    return files
