"""One measurement in its own process (so its peak RSS is its own):

    python bench/bench_run.py KIND SPEC.json RESULT.json

KIND is ``ours_cached`` / ``ours_live`` (trainer.train.loop.train() with caching on / off),
``floor`` (bare UNet step, bench/floor.py) or ``reference`` (bench/reference_loop.py).
RESULT.json gets the timings, the VAE / text-encoder calls per epoch and the memory readings.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_setup import Spec, memory_status, model_gigabytes  # noqa: E402


def load(spec: Spec):
    """The model exactly as train() loads it (weight dtype from mixed_precision)."""
    import torch

    from trainer.models.loader import load_model
    from trainer.train.precision import resolve_precision

    dtype, autocast = resolve_precision(spec.mixed_precision, torch.device("cpu"))
    return load_model(spec.model, spec.family, dtype), autocast


def count_encoder_calls(model, clock: dict) -> dict:
    """Forward hooks on the VAE's encoder / decoder and on each text encoder, counting calls per
    epoch of the step being computed (epoch 1 also holds the caching done before step 1)."""
    calls: dict = {"vae": {}, "text": {}}

    def hook(kind):
        def count(*_):
            epoch = clock["done"] // clock["per_epoch"] + 1
            calls[kind][epoch] = calls[kind].get(epoch, 0) + 1
        return count

    model.vae.encoder.register_forward_pre_hook(hook("vae"))
    model.vae.decoder.register_forward_pre_hook(hook("vae"))
    for encoder in model.text_encoders():
        encoder.register_forward_pre_hook(hook("text"))
    return calls


def ours(spec: Spec, cache: bool) -> dict:
    from trainer.config import TrainConfig
    from trainer.train.loop import Callbacks, train

    loaded_at = time.perf_counter()
    model, _ = load(spec)
    memory = {"after_load": memory_status()}
    config = TrainConfig(pretrained_model_name_or_path=spec.model, model_family=spec.family, train_data_dir=spec.data,
                         resolution=str(spec.resolution), network_dim=spec.rank, network_alpha=spec.rank,
                         learning_rate=1e-4, train_batch_size=spec.batch, max_train_epochs=spec.epochs,
                         mixed_precision=spec.mixed_precision, cache_latents=cache, cache_text_encoder_outputs=cache,
                         output_dir=spec.out, output_name="bench", seed=0)
    clock = {"done": 0, "per_epoch": spec.steps_per_epoch}
    calls = count_encoder_calls(model, clock)
    marks: list[float] = []

    def on_start(*_):
        memory["training_starts"] = memory_status()  # after caching (and paging out)
        marks.append(time.perf_counter())

    def on_step(step, *_):
        clock["done"] = step
        marks.append(time.perf_counter())

    result = train(config, model, callbacks=Callbacks(on_start=on_start, on_step=on_step, log=lambda _: None))
    memory["end"] = memory_status()
    per = spec.steps_per_epoch
    epochs = [marks[e * per] - marks[(e - 1) * per] for e in range(1, len(marks) // per + 1)]
    intervals = [b - a for a, b in zip(marks[per:], marks[per + 1:])]
    return {"seconds_per_step": result.seconds_per_step, "epoch_seconds": epochs,
            "step_intervals_from_epoch_2": intervals, "steps": result.steps,
            "encoder_calls": calls, "encoder_calls_result": result.encoder_calls,
            "model_gb": model_gigabytes(model), "memory": memory,
            "wall_seconds": time.perf_counter() - loaded_at}


def training_lora(model, rank: int) -> list:
    """The LoRA train() builds for this family at ``rank`` (alpha = rank): kohya's module set on
    SD1.5/SDXL, the attention set on Kolors (trainer/lora/targets.py)."""
    from trainer.config import TrainConfig
    from trainer.lora.network import add_lora_modules
    from trainer.lora.targets import network_spec, unet_targets

    spec = network_spec(TrainConfig(network_dim=rank, network_alpha=rank), model.family.name)
    return add_lora_modules(model.unet, unet_targets(model.unet, spec))


def floor(spec: Spec) -> dict:
    import floor as bare

    from trainer.data.dataset import load_dataset
    from trainer.lora.network import autocast_lora_inputs

    model, autocast = load(spec)
    dataset = load_dataset(spec.data)
    steps = spec.steps_per_epoch * spec.epochs
    draws, kwargs = bare.prepare(model, dataset, spec.resolution, spec.batch, steps)
    params = training_lora(model, spec.rank)
    # the floor skips peft's input up-casts as train() does (same result, less copying)
    times = bare.run(model, draws, kwargs, params, autocast_lora_inputs(autocast, model.unet))
    return {"step_seconds": times, "model_gb": model_gigabytes(model), "memory": {"end": memory_status()}}


def reference(spec: Spec) -> dict:
    import reference_loop

    from trainer.data.dataset import load_dataset
    model, autocast = load(spec)
    dataset = load_dataset(spec.data)
    params = training_lora(model, spec.rank)
    times = reference_loop.run(model, dataset, spec.resolution, spec.batch, spec.epochs, params, autocast)
    return {"epoch_seconds": times, "model_gb": model_gigabytes(model), "memory": {"end": memory_status()}}


def main() -> None:
    kind, spec_path, result_path = sys.argv[1:4]
    spec = Spec(**json.loads(Path(spec_path).read_text(encoding="utf-8")))
    from trainer.progress import quiet_libraries

    quiet_libraries()
    if kind in ("ours_cached", "ours_live"):
        result = ours(spec, cache=kind == "ours_cached")
    elif kind == "floor":
        result = floor(spec)
    elif kind == "reference":
        result = reference(spec)
    else:
        raise SystemExit(f"unknown measurement {kind}")
    result["kind"] = kind
    result["peak_rss_gb"] = memory_status()["peak_gb"]
    from trainer.atomic import write_text

    write_text(result_path, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
