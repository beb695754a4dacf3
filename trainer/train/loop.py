"""train(): the one training loop the CLI and the ComfyUI nodes both call."""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from ..config import TrainConfig
from ..data.augment import Augment
from ..data.captions import process_caption
from ..data.dataset import Dataset, add_regularization, load_dataset, split_validation
from ..data.manifest import read_manifest
from ..errors import TrainerError
from ..families.base import CONV_TARGETS
from ..lora.kohya_format import (TrainedLora, build_metadata, fold_alpha, peft_to_kohya,
                                 text_encoder_to_kohya)
from ..lora.network import (ADAPTER, add_text_encoder_lora, add_unet_lora, autocast_lora_inputs, conv_module_names,
                            lora_state_dict)
from ..models.loader import LoadedModel, load_model
from .bucketing import assign_buckets, run_batches, steps_per_epoch
from .distributed import Distributed
from .devices import (caching_in_order, encoders_on, encoders_to_page, offload_cached_encoders,
                      release_text_encoders, restore_encoders, text_caching_placement, training_placement)
from .disk_space import cache_needs, check_free_space, save_needs
from .evaluate import dataset_loss
from .host_memory import reuse_freed_memory
from .optim import build_lr_scheduler, build_optimizer
from .precision import default_device, resolve_precision
from .snapshots import save_epoch, save_outputs, wants_samples  # noqa: F401 (save_outputs: the CLI's)
from .sources import LatentSource, TextSource
from .state import Progress, batches_done, load_state, save_state, state_dir
from .micro_batch import draw_micro_batch
from .step import diffusion_loss
from .validation import overfitting_warning

NAN_HELP = ("Loss became {value} at step {step}. Likely causes: learning rate too high (try half), "
            "fp16 overflow (use bf16 or no mixed precision), or an fp16 VAE (use sdxl-vae-fp16-fix "
            "or keep the VAE in fp32). Nothing was saved from this run.")


@dataclass
class Callbacks:
    """Hooks a UI passes in: progress per step, a stop request checked every step, log lines."""

    on_start: Callable[[int, Dataset], None] | None = None  # (total steps, dataset)
    on_step: Callable[[int, int, float], None] | None = None  # (step, total, loss)
    on_samples: Callable[[int, dict], None] | None = None  # (step, {name: png path})
    on_loss: Callable[[int, float, float], None] | None = None  # (step, loss, smoothed loss)
    should_stop: Callable[[], bool] | None = None
    log: Callable[[str], None] = print


@dataclass
class TrainResult:
    lora: TrainedLora | None
    model: LoadedModel  # with the trained adapter active
    losses: list[float]
    steps: int
    total_steps: int
    epochs: int
    seconds_per_step: float
    stopped: bool = False
    files: dict[str, Path] = field(default_factory=dict)
    encoder_calls: dict[str, int] = field(default_factory=dict)  # VAE / text-encoder calls made
    learning_rates: list[float] = field(default_factory=list)  # the lr each step used
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (epoch, loss)
    warnings: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(config: TrainConfig, dataset: Dataset, buckets: dict | None = None, world: int = 1) -> int:
    """images x repeats / (batch x processes) per epoch (rounded up, per bucket when bucketing),
    times epochs, unless max_train_steps."""
    if config.max_train_steps:
        return int(config.max_train_steps)
    batches = steps_per_epoch(dataset, buckets, config.train_batch_size * world)
    return math.ceil(batches / config.gradient_accumulation_steps) * config.max_train_epochs


def caption_for_step(config: TrainConfig, caption: str, rng: random.Random) -> str:
    """kohya's per-step caption handling: shuffle, keep tokens, tag and caption dropout."""
    if not (config.shuffle_caption or config.caption_dropout_rate or config.caption_tag_dropout_rate):
        return caption
    return process_caption(caption, rng, config.shuffle_caption, config.keep_tokens, config.keep_tokens_separator,
                           config.caption_dropout_rate, config.caption_tag_dropout_rate, config.caption_separator)


def diffusers_clip_skip(clip_skip: int) -> int | None:
    """kohya counts the last layer as 1 (2 = penultimate); diffusers counts layers skipped."""
    return clip_skip - 1 if clip_skip and clip_skip > 1 else None


def trained_text_encoders(model, config: TrainConfig) -> list[str]:
    """The pipeline attributes of the text encoders that get a LoRA (CLIP families only)."""
    if not config.trains_text_encoder or model.family.name == "kolors":
        return []
    return [name for name in model.family.text_parts if name.startswith("text_encoder")]


def extract_lora(model, config: TrainConfig, dataset, step: int, epoch: int, started: float,
                 buckets: dict | None = None) -> TrainedLora:
    unet, family = model.unet, model.family
    convs = conv_module_names(unet, CONV_TARGETS) if config.conv_dim else []
    tensors = peft_to_kohya(lora_state_dict(unet, ADAPTER), config.network_alpha,
                            conv_modules=convs, conv_alpha=config.conv_alpha)
    conv_set = set(convs)
    diffusers = fold_alpha(lora_state_dict(unet, ADAPTER), "unet",
                           lambda path: config.conv_alpha if path in conv_set else config.network_alpha)
    for name in trained_text_encoders(model, config):
        state = lora_state_dict(getattr(model.pipe, name), ADAPTER)
        tensors.update(text_encoder_to_kohya(state, name, family.name, config.network_alpha))
        diffusers.update(fold_alpha(state, name, lambda path: config.network_alpha))
    meta = build_metadata(config, family, dataset, step, epoch, started, buckets)
    return TrainedLora(tensors, meta, diffusers)


def train(config: TrainConfig, model: LoadedModel | None = None, dataset: Dataset | None = None,
          callbacks: Callbacks | None = None, device: torch.device | None = None,
          dist: Distributed | None = None) -> TrainResult:
    """Train a LoRA as ``config`` says. Safe to call under torch.inference_mode() (ComfyUI runs
    nodes that way): everything the run creates is made outside it, as trainable tensors.

    ``dist``: this process's place in a multi-process run (distributed.from_environment()); only
    rank 0 calls the callbacks and writes files."""
    with torch.inference_mode(False):
        return _train(config, model, dataset, callbacks, device, dist or Distributed())


def _train(config: TrainConfig, model: LoadedModel | None, dataset: Dataset | None,
           callbacks: Callbacks | None, device: torch.device | None, dist: Distributed) -> TrainResult:
    config.validate()
    cb = (callbacks or Callbacks()) if dist.is_main else Callbacks(log=lambda line: None)
    device = device or (dist.device() if dist.enabled else default_device())
    weight_dtype, autocast = resolve_precision(config.mixed_precision, device)
    width, height = config.size()
    if dataset is None and config.dataset_manifest:
        dataset = read_manifest(config.dataset_manifest)
    if dataset is None:
        dataset = load_dataset(config.train_data_dir, config.dataset_repeats, config.class_tokens,
                               config.caption_extension)
    if config.reg_data_dir and not any(item.is_reg for item in dataset.items):
        dataset = add_regularization(dataset, config.reg_data_dir, 1, "", config.caption_extension)
    for note in dataset.notes:  # after the regularization folder joined: its notes too
        cb.log(f"note: {note}")
    dataset, validation_set = split_validation(dataset, config.validation_split, config.seed)
    if model is None:
        if not config.pretrained_model_name_or_path:
            raise TrainerError("No model given: set pretrained_model_name_or_path to a diffusers folder or checkpoint.")
        model = load_model(config.pretrained_model_name_or_path, config.model_family, weight_dtype,
                           vae_path=config.vae or None, tokenizer_dir=config.tokenizer_dir or None)
    seed_everything(config.seed)
    ordered = caching_in_order(model, config, device)
    family, unet = model.family, model.unet
    scheduler = family.training_scheduler(config.v_parameterization)
    cache_dir = Path(config.cache_dir or Path(config.output_dir) / "cache")
    caption_rng = random.Random(config.seed)  # captions and augmentation draw from it
    buckets = assign_buckets(dataset, config)
    latents_from = LatentSource(model, dataset, width, height, config.cache_latents,
                                cache_dir if config.cache_latents_to_disk else None,
                                Augment.from_config(config), caption_rng, buckets)
    te_names = trained_text_encoders(model, config)
    if config.trains_text_encoder and not te_names:
        cb.log("note: Kolors' ChatGLM text encoder stays frozen; text_encoder_lr is ignored")
    text_from = TextSource(model, diffusers_clip_skip(config.clip_skip), config.cache_text_encoder_outputs,
                           cache_dir if config.cache_text_encoder_outputs_to_disk else None, bool(te_names))
    check_free_space(cache_dir, cache_needs(latents_from, text_from, [item.caption for item in dataset.items],
                                            encoders_to_page(model, config, device)), "cache_dir", cb.log)
    latents_from.prepare(cb.log, dist.rank, dist.world)
    if ordered:
        text_caching_placement(model, config, device)
    text_from.prepare([item.caption for item in dataset.items], device, cb.log, dist.rank, dist.world)
    if ordered:
        training_placement(model, config, device)
    dist.barrier()  # every rank's share of a disk cache is written
    offload_cached_encoders(model, config, device)
    if config.release_text_encoder:
        release_text_encoders(model)
        cb.log("text encoder(s) released after caching: reload the model to encode new prompts")

    params = add_unet_lora(unet, config.network_dim, config.network_alpha, family.lora_targets,
                           conv_rank=config.conv_dim, conv_alpha=config.conv_alpha, conv_targets=CONV_TARGETS,
                           dropout=config.network_dropout)
    groups = [{"params": params, "lr": config.unet_lr or config.learning_rate}]
    trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    for name in te_names:
        encoder = getattr(model.pipe, name)
        te_params = add_text_encoder_lora(encoder, config.network_dim, config.network_alpha,
                                          dropout=config.network_dropout)
        groups.append({"params": te_params, "lr": config.text_encoder_lr})
        trainable.update({f"{name}.{n}": p for n, p in encoder.named_parameters() if p.requires_grad})
        params = params + te_params
        encoder.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    autocast = autocast_lora_inputs(autocast, unet)

    if config.full_bf16:
        for param in params:
            param.data = param.data.to(torch.bfloat16)
    lr = config.unet_lr or config.learning_rate
    optimizer = build_optimizer(config.optimizer_type, groups, lr, config.optimizer_args, device, cb.log)
    global_batch = config.train_batch_size * dist.world
    steps = total_steps(config, dataset, buckets, dist.world)
    accumulation = config.gradient_accumulation_steps
    lr_schedule = build_lr_scheduler(config.lr_scheduler, optimizer, config.lr_warmup_steps, steps,
                                     config.lr_scheduler_num_cycles, config.lr_scheduler_power, cb.log)
    gen = torch.Generator().manual_seed(config.seed)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none
    scaler = torch.amp.GradScaler(device.type, enabled=weight_dtype == torch.float16)
    reg = (f" + {dataset.num_train_samples} regularization samples ({dataset.num_reg_images} images)"
           if dataset.num_reg_images else "")
    procs = f" x {dist.world} processes" if dist.enabled else ""
    cb.log(f"{family.label}: {dataset.num_images} images x repeats = {dataset.num_train_samples}{reg} per epoch, "
           f"batch {config.train_batch_size}{procs} -> {steps} steps")
    if dist.is_main:  # before the first step: do the LoRA, epoch saves and states fit on the drive?
        check_free_space(config.output_dir, save_needs(config, params, family, dataset, buckets, steps, dist.world),
                         log=cb.log)
    if cb.on_start:
        cb.on_start(steps, dataset)

    result = TrainResult(None, model, [], 0, steps, 0, 0.0)
    progress = Progress()
    if config.resume:
        progress = load_state(config.resume, trainable, optimizer, lr_schedule, scaler, gen, caption_rng)
        result.losses = list(progress.losses)
        cb.log(f"resumed from {config.resume} at step {progress.step} (epoch {progress.epoch + 1})")
    dist.broadcast_(params)  # identical LoRA on every rank (same seed already makes it so)
    started, step, epoch, stopped = time.time(), progress.step, progress.epoch, False
    step_times: list[float] = []
    smoothed = 0.0

    def checkpoint(position: int, samples: int) -> None:
        if dist.is_main:
            save_state(state_dir(config), trainable, optimizer, lr_schedule, scaler, gen, caption_rng,
                       Progress(step, epoch, position, result.losses, samples, global_batch), config)

    @contextlib.contextmanager
    def saved_if_raised(position: int, samples: int):
        """A UI may end the run by raising from a callback (ComfyUI's Cancel raises its interrupt
        from the progress bar, i.e. inside on_step): the steps done so far are kept as a state,
        exactly as a should_stop request keeps them, and the exception goes on."""
        try:
            yield
        except BaseException:
            checkpoint(position, samples)
            cb.log(f"stopped at step {step}; resume with resume = \"{state_dir(config)}\"")
            tidy()
            raise

    def tidy() -> None:
        """The model as generating wants it: eval mode, every encoder back on the device."""
        unet.eval()
        for name in te_names:
            getattr(model.pipe, name).eval()
        if config.gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        restore_encoders(model, device)

    def snapshot() -> TrainedLora:
        return extract_lora(model, config, dataset, step, epoch, started, buckets)

    def sample(tag: str) -> None:
        from ..sample_prompts import write_samples

        if not dist.is_main:
            return
        unet.eval()
        with encoders_on(model, device):
            files = write_samples(model, config, Path(config.output_dir) / "samples", tag)
        unet.train()
        result.files.update(files)
        if cb.on_samples:
            cb.on_samples(step, files)

    def validate(epoch_done: int) -> None:
        if not dist.is_main:
            return
        unet.eval()
        with encoders_on(model, device):  # paged-out encoders leave RAM again afterwards
            loss = dataset_loss(model, validation_set, width, height, seed=config.seed,
                                mixed_precision=config.mixed_precision,
                                clip_skip=diffusers_clip_skip(config.clip_skip))
        unet.train()
        result.validation_losses.append((epoch_done, loss))
        cb.log(f"epoch {epoch_done}: validation loss {loss:.4f} ({validation_set.num_images} held-out images)")
        warning = overfitting_warning(result.losses, result.validation_losses)
        if warning and warning not in result.warnings:
            result.warnings.append(warning)
            cb.log(f"warning: {warning}")

    if wants_samples(config, step, None) and step == 0:
        sample("_e000000")
    run = SimpleNamespace(config=config, dataset=dataset, family=family, scheduler=scheduler, device=device,
                          latents_from=latents_from, text_from=text_from, width=width, height=height,
                          caption_for=lambda i, rng: caption_for_step(config, dataset.items[i].caption, rng))
    with torch.inference_mode(False), torch.enable_grad(), reuse_freed_memory(device):
        while step < steps and not stopped:
            batches = run_batches(dataset, buckets, global_batch, config.seed, epoch)
            skip = batches_done(batches, progress, global_batch) if epoch == progress.epoch else 0
            if skip and progress.global_batch not in (None, global_batch):
                cb.log(f"note: the state was saved with {progress.global_batch} images per step, this run takes "
                       f"{global_batch}: resuming after {sum(map(len, batches[:skip]))} of the epoch's samples")
            micro, loss_sum, samples = 0, 0.0, sum(map(len, batches[:skip]))
            for position, indices in enumerate(batches, 1):
                if position <= skip:
                    continue  # done before the resume
                if not micro:
                    t0 = time.perf_counter()
                mb = draw_micro_batch(indices, dist.my_slice(len(indices)), run, gen, caption_rng)
                if mb.indices:
                    loss = diffusion_loss(model, scheduler, mb.latents, mb.cond, mb.time_ids, mb.noise,
                                          mb.timesteps, autocast, config, mb.weights)
                    # each rank's share of the global mean: summed over ranks, the gradient is the
                    # gradient of one process running the whole global batch
                    scaler.scale(loss * (mb.share / accumulation)).backward()
                    loss_sum += float(loss.detach()) * mb.share
                micro += 1
                samples += len(indices)
                if micro < accumulation and position < len(batches):
                    continue  # gradient accumulation: more micro-batches before this step
                (loss_sum,) = dist.sum_gradients_(params, [loss_sum])
                if not math.isfinite(loss_sum):
                    raise TrainerError(NAN_HELP.format(value=loss_sum, step=step + 1))
                scaler.unscale_(optimizer)
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                result.learning_rates.append(float(optimizer.param_groups[0]["lr"]))
                lr_schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.losses.append(loss_sum / micro)
                micro, loss_sum = 0, 0.0
                step_times.append(time.perf_counter() - t0)
                with saved_if_raised(position, samples):  # the step is done: a UI's interrupt keeps it
                    if len(step_times) == 3:
                        per = float(np.median(step_times))
                        cb.log(f"{per:.2f} s/step: about {per * (steps - step) / 60:.1f} min for the remaining "
                               f"{steps - step} steps")
                    if cb.on_step:
                        cb.on_step(step, steps, result.losses[-1])
                    if cb.on_loss:
                        smoothed = 0.9 * smoothed + 0.1 * result.losses[-1] if step > 1 else result.losses[-1]
                        cb.on_loss(step, result.losses[-1], smoothed)
                    if wants_samples(config, step, None):
                        sample(f"_s{step:06d}")
                    stopped = step < steps and dist.any(bool(cb.should_stop and cb.should_stop()))
                if stopped:
                    checkpoint(position, samples)
                    cb.log(f"stopped at step {step}; resume with resume = \"{state_dir(config)}\"")
                if stopped or step >= steps:
                    break
            if stopped:
                break
            epoch += 1
            if position == len(batches) and not stopped:  # a whole epoch done
                if config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and step < steps \
                        and dist.is_main:
                    result.files[f"epoch_{epoch}"] = save_epoch(snapshot(), config, epoch, cb.log,
                                                                keep_state=lambda: checkpoint(0, 0))
                with saved_if_raised(0, 0):
                    if wants_samples(config, step, epoch):
                        sample(f"_e{epoch:06d}")
                    if validation_set is not None:
                        validate(epoch)
                if config.save_state:
                    checkpoint(0, 0)
    tidy()
    result.lora, result.steps, result.epochs = snapshot(), step, epoch
    result.seconds_per_step = float(np.median(step_times)) if step_times else 0.0
    result.stopped = stopped
    result.encoder_calls = {"vae": latents_from.vae_calls, "text": text_from.encoder_calls}
    return result
