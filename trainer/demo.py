"""The demo: train-then-generate on a tiny built-in model, fully offline, in about a minute.

Builds a tiny model (its VAE reconstructs: trainer/tiny/vae_weights.py), teaches its UNet to
denoise painted shapes (trainer/tiny/pretrain.py: a random UNet is no base a LoRA can build on),
paints a small dataset (a yellow star on blue, captioned with the trigger word "ltdemo"),
samples before training, trains a LoRA (kohya's target set: every linear and conv layer of the
UNet's blocks), saves it, reloads the model from disk, applies the saved file and samples again
with the same seed, then writes a loss chart.

The tiny base model predicts v (``v_parameterization``, as SD2-768 and v-pred SDXL finetunes do),
not the noise as the full-size Kolors does. At the first sampling steps (sigma 15..27) an
epsilon model's picture is the noise it removes times sigma; this tiny UNet misses the noise
by 0.02-0.03 MSE there (its image estimate is then off by 4-19 MSE against a latent variance
of 0.8) and every sample stays coloured noise, LoRA or not. Predicting v, its image estimate at
those steps comes straight out of the network (measured, 4 seeds: without the LoRA 87, with it
29 of 255 from the nearest training picture; epsilon: 108 and 76).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .atomic import save_image, write_text

TRIGGER = "ltdemo"
SIZE = 64
PRETRAIN_STEPS = 200
EPOCHS = 20
PREDICTION = "v_prediction"  # the tiny base model's (module docstring)


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


def pixel_distances(model, config, prompt: str, sample_args: dict, seeds: int = 4) -> tuple[float, float]:
    """Mean absolute difference (0..255) from each sampled picture to the nearest training picture,
    LoRA off and on, over ``seeds`` seeds: how much closer the LoRA brings samples to what it saw."""
    import numpy as np

    from .sample import generate

    train = [np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
             for p in sorted(Path(config.train_data_dir).rglob("*.png"))]
    result = []
    for strength in (0.0, 1.0):
        dists = []
        for seed in range(seeds):
            image = generate(model, prompt, lora_strength=strength, **dict(sample_args, seed=seed))
            dists.append(min(float(np.abs(np.asarray(image, dtype=np.float64) - t).mean()) for t in train))
        result.append(sum(dists) / len(dists))
    return result[0], result[1]


def run_demo(out: Path, family: str = "kolors", epochs: int = EPOCHS,
             pretrain_steps: int = PRETRAIN_STEPS) -> dict[str, Path]:
    from tqdm import tqdm

    from .config import TrainConfig
    from .lora.apply import apply_lora
    from .models.loader import load_model
    from .progress import quiet_libraries, tqdm_callbacks
    from .sample import generate
    from .tiny.build import write_tiny_model
    from .tiny.pretrain import pretrain_unet
    from .train.loop import save_outputs, train

    quiet_libraries()
    started = time.time()
    out = Path(out).resolve()
    print(f"[1/5] building a tiny {family} model in {out / 'model'} and teaching it to denoise painted shapes "
          f"({pretrain_steps} steps: a stand-in for a real base model's pretraining)")
    v_prediction = PREDICTION == "v_prediction"
    model_dir = write_tiny_model(family, out / "model", prediction_type=PREDICTION)
    base = load_model(model_dir, family)
    with tqdm(total=pretrain_steps, unit="step", dynamic_ncols=True, desc="pretraining") as bar:
        pretrain_unet(base, pretrain_steps, SIZE, lr=2e-3, v_prediction=v_prediction,
                      on_step=lambda loss: (bar.update(), bar.set_postfix(loss=f"{loss:.3f}", refresh=False)))
    base.unet.save_pretrained(str(model_dir / "unet"), safe_serialization=True)
    data_dir = paint_dataset(out / "dataset")
    config = TrainConfig(
        pretrained_model_name_or_path=str(model_dir), model_family=family, train_data_dir=str(data_dir),
        resolution=str(SIZE), network_dim=16, network_alpha=16, conv_dim=16, conv_alpha=16, learning_rate=3e-3,
        max_train_epochs=epochs, train_batch_size=4, network_args=["target=kohya"], seed=7,
        v_parameterization=v_prediction, output_dir=str(out / "lora"), output_name=f"{TRIGGER}_{family}",
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
    closeness = pixel_distances(fresh, config, prompt, sample_args)
    samples = out / "samples"
    files["sample_before"] = save_image(samples / "before.png", before)
    files["sample_after"] = save_image(samples / "after.png", after)
    files["before_after"] = save_image(samples / "before_after.png", side_by_side(before, after))

    print("[5/5] done in %.0f s: %d steps at %.3f s/step, loss %.4f -> %.4f (first/last 10-step mean)" % (
        time.time() - started, result.steps, result.seconds_per_step,
        sum(result.losses[:10]) / len(result.losses[:10]), sum(result.losses[-10:]) / len(result.losses[-10:])))
    print("  sampled pictures vs the nearest training picture (mean absolute difference of 255, 4 seeds): "
          "without LoRA %.1f, with LoRA %.1f" % closeness)
    width = max(len(k) for k in files)
    for name, path in files.items():
        print(f"  {name.ljust(width)}  {path}")
    print(f"  {'config'.ljust(width)}  {out / 'run.toml'}")
    return files
