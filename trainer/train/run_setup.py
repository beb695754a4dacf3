"""The run set-up: what is trained (the network), on what (dataset, buckets, latent and text
sources with their caches), with which optimizer, lr schedule, loss scaler, random generators
and step counts, resumed or fresh. prepare_run() builds it in kohya's order; the step loop
(loop.py) only runs it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.augment import Augment
from ..data.dataset import Dataset, add_regularization, load_dataset, split_validation
from ..data.kohya_dataset_config import load_dataset_config
from ..data.manifest import read_manifest
from ..data.masks import masks_for_run
from ..data.merge import resolve_parts
from ..errors import TrainerError
from ..lora.builders import Network, network_builder, trained_text_encoders
from ..models.loaded import check_prediction_type
from ..models.loader import LoadedModel, load_model
from .api import Callbacks
from .bucketing import assign_buckets, part_lines, steps_per_epoch
from .caption_options import cache_captions, caption_at, text_options
from .devices import (caching_in_order, encoders_to_page, offload_cached_encoders, release_text_encoders,
                      text_caching_placement, training_placement)
from .disk_space import cache_needs, check_free_space, save_needs
from .distributed import Distributed
from .loss_weights import check_loss_options
from .fp8_base import store_base_in_fp8
from .lr_schedule import schedule_for
from .optim import build_optimizer
from .precision import default_device, grad_scaler, lower_network_precision, resolve_precision
from .sources import LatentSource, TextSource, diffusers_clip_skip
from .state import Progress, load_state
from .tracker import check_logging


@dataclass
class RunSetup:
    config: TrainConfig
    cb: Callbacks  # the caller's on rank 0, silent elsewhere
    device: torch.device
    dist: Distributed
    model: LoadedModel
    dataset: Dataset
    validation_set: Dataset | None
    buckets: dict | None
    width: int
    height: int
    scheduler: object  # the family's noise scheduler
    latents_from: LatentSource
    text_from: TextSource
    network: Network
    autocast: object  # the context each forward pass runs in
    optimizer: torch.optim.Optimizer
    lr_schedule: object
    scaler: torch.amp.GradScaler
    gen: torch.Generator  # noise and timesteps
    caption_rng: random.Random  # captions and augmentation
    steps: int
    accumulation: int
    global_batch: int  # items per step, all processes together
    progress: Progress  # where a resumed run stands (all zero when fresh)
    current_epoch: int = 1  # kohya's: the epoch being trained (from 1) and the steps done, for
    current_step: int = 0  # caption_dropout_every_n_epochs and token warmup (the step loop sets them)

    @property
    def family(self):
        return self.model.family

    def caption_for(self, index: int, rng: random.Random) -> str:
        """kohya's per-step caption handling (data/captions.py process_caption): prefix/suffix,
        dropout, wildcards, shuffle, keep tokens, token warmup, tag dropout, secondary separator."""
        return caption_at(self.dataset.items[index], self.config, rng, self.current_epoch, self.current_step,
                          self.steps)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(config: TrainConfig, dataset: Dataset, buckets: dict | None = None, world: int = 1) -> int:
    """images x repeats / (batch x processes) per epoch (rounded up, per bucket when bucketing),
    times epochs, unless max_train_steps."""
    if config.max_train_steps:
        return int(config.max_train_steps)
    batches = steps_per_epoch(dataset, buckets, config.train_batch_size * world, world)
    return math.ceil(batches / config.gradient_accumulation_steps) * config.max_train_epochs


def planned_epochs(config: TrainConfig, dataset: Dataset, buckets: dict | None = None, world: int = 1) -> int:
    """kohya's num_train_epochs (ss_num_epochs): max_train_epochs, or the epochs max_train_steps spans."""
    if not config.max_train_steps:
        return int(config.max_train_epochs)
    batches = steps_per_epoch(dataset, buckets, config.train_batch_size * world, world)
    return math.ceil(int(config.max_train_steps) / max(1, math.ceil(batches / config.gradient_accumulation_steps)))


def prepare_run(config: TrainConfig, model: LoadedModel | None, dataset: Dataset | None,
                callbacks: Callbacks | None, device: torch.device | None, dist: Distributed) -> RunSetup:
    """Everything before the first step, in this order: the random draws (LoRA init, noise) and
    the log lines follow it, and exact resume compares LoRAs to 1e-6."""
    config.validate()
    check_logging(config)  # kohya's log_with refusals, before anything loads
    build_network = network_builder(config.network_module)  # an unknown one stops before loading
    cb = (callbacks or Callbacks()) if dist.is_main else Callbacks(log=lambda line: None)
    check_loss_options(config, cb.log)  # kohya's refusals come before the model loads
    device = device or (dist.device() if dist.enabled else default_device())
    weight_dtype, autocast = resolve_precision(config.mixed_precision, device)
    width, height = config.size()
    dataset, validation_set = _dataset(config, dataset, cb)
    if model is None:
        if not config.pretrained_model_name_or_path:
            raise TrainerError("No model given: set pretrained_model_name_or_path to a diffusers folder or checkpoint.")
        model = load_model(config.pretrained_model_name_or_path, config.model_family, weight_dtype,
                           vae_path=config.vae or None, tokenizer_dir=config.tokenizer_dir or None)
    check_prediction_type(config.pretrained_model_name_or_path, config.v_parameterization, cb.log)
    seed_everything(config.seed)
    ordered = caching_in_order(model, config, device)
    family, unet = model.family, model.unet
    scheduler = family.training_scheduler(config.v_parameterization, config.zero_terminal_snr)
    caption_rng = random.Random(config.seed)  # captions and augmentation draw from it
    buckets = assign_buckets(dataset, config)
    te_names = trained_text_encoders(model, config)
    latents_from, text_from = _fill_caches(config, model, dataset, buckets, caption_rng, te_names, ordered,
                                           device, dist, cb, width, height)

    network = build_network(model, config, te_names, cb.log)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    autocast = network.autocast(autocast)
    store_base_in_fp8(model, config, weight_dtype, cb.log)
    lower_network_precision(network.params, config, weight_dtype)
    lr = config.unet_lr or config.learning_rate
    optimizer = build_optimizer(config.optimizer_type, network.groups, lr, config.optimizer_args, device, cb.log)
    global_batch = config.train_batch_size * dist.world
    steps = total_steps(config, dataset, buckets, dist.world)
    lr_schedule = schedule_for(config, optimizer, steps, cb.log)
    gen = torch.Generator().manual_seed(config.seed)
    scaler = grad_scaler(device, weight_dtype, config.full_fp16)
    reg = (f" + {len(dataset.reg_sequence())} regularization samples ({dataset.num_reg_images} images)"
           if dataset.num_reg_images else "")
    procs = f" x {dist.world} processes" if dist.enabled else ""
    cb.log(f"{family.label}: {dataset.num_images} images x repeats = {dataset.num_train_samples}{reg} per epoch, "
           f"batch {config.train_batch_size}{procs} -> {steps} steps")
    for line in part_lines(dataset, buckets, dist.world):  # several datasets: each one's size and batches
        cb.log(line)
    if dist.is_main:  # before the first step: do the LoRA, epoch saves and states fit on the drive?
        check_free_space(config.output_dir, save_needs(config, network.params, family, dataset, buckets, steps,
                                                       dist.world), log=cb.log)
    if cb.on_start:
        cb.on_start(steps, dataset)

    progress = Progress()
    if config.resume:
        progress = load_state(config.resume, network.trainable, optimizer, lr_schedule, scaler, gen, caption_rng)
        cb.log(f"resumed from {config.resume} at step {progress.step} (epoch {progress.epoch + 1})")
    dist.broadcast_(network.params)  # identical LoRA on every rank (same seed already makes it so)
    return RunSetup(config, cb, device, dist, model, dataset, validation_set, buckets, width, height, scheduler,
                    latents_from, text_from, network, autocast, optimizer, lr_schedule, scaler, gen, caption_rng,
                    steps, config.gradient_accumulation_steps, global_batch, progress)


def _dataset(config: TrainConfig, dataset: Dataset | None, cb: Callbacks) -> tuple[Dataset, Dataset | None]:
    """The given dataset, else the manifest's or the folder's, with the regularization images; then
    the validation split."""
    if dataset is not None and config.dataset_config:
        cb.log(f"note: dataset_config {config.dataset_config} ignored: the dataset given (the graph's) trains")
    if dataset is None and config.dataset_manifest:
        dataset = read_manifest(config.dataset_manifest)
    if dataset is None and config.dataset_config:
        dataset = load_dataset_config(config.dataset_config, config)
        ignored = [name for name in ("train_data_dir", "reg_data_dir") if getattr(config, name)]
        if ignored:  # kohya: the dataset config replaces them
            cb.log(f"note: {' and '.join(ignored)} ignored: dataset_config {config.dataset_config} says what to train")
    if dataset is None:
        dataset = load_dataset(config.train_data_dir, config.dataset_repeats, config.class_tokens,
                               config.caption_extension)
    if config.reg_data_dir and not config.dataset_config and not any(item.is_reg for item in dataset.items):
        dataset = add_regularization(dataset, config.reg_data_dir, 1, "", config.caption_extension)
    dataset = resolve_parts(dataset, config)  # merged datasets: their unset keys follow this run's settings
    dataset = masks_for_run(dataset, config)  # the loss masks (masked_loss / alpha_mask, or the graph's)
    for note in dataset.notes:  # after the regularization folder joined: its notes too
        cb.log(f"note: {note}")
    masked = sum(item.mask is not None for item in dataset.items)
    if masked:
        cb.log(f"masked loss: {masked} of {len(dataset.items)} images weight their loss by a mask (white = train)")
    return split_validation(dataset, config.validation_split, config.seed)


def _fill_caches(config, model, dataset, buckets, caption_rng, te_names, ordered, device, dist, cb,
                 width, height) -> tuple[LatentSource, TextSource]:
    """The latent and text sources, their caches filled (each encoder placed as caching wants it,
    kohya's order), then the model placed for training and the cached encoders paged or released."""
    cache_dir = Path(config.cache_dir or Path(config.output_dir) / "cache")
    latents_from = LatentSource(model, dataset, width, height, config.cache_latents,
                                cache_dir if config.cache_latents_to_disk else None,
                                Augment.from_config(config), caption_rng, buckets)
    if config.trains_text_encoder and not te_names:
        cb.log("note: Kolors' ChatGLM text encoder stays frozen; text_encoder_lr is ignored")
    text_from = TextSource(model, diffusers_clip_skip(config.clip_skip), config.cache_text_encoder_outputs,
                           cache_dir if config.cache_text_encoder_outputs_to_disk else None, bool(te_names),
                           text_options(config, model.family, cb.log))
    captions = cache_captions(dataset.items, config)
    check_free_space(cache_dir, cache_needs(latents_from, text_from, captions,
                                            encoders_to_page(model, config, device)), "cache_dir", cb.log)
    latents_from.prepare(cb.log, dist.rank, dist.world)
    if ordered:
        text_caching_placement(model, config, device)
    text_from.prepare(captions, device, cb.log, dist.rank, dist.world)
    if ordered:
        training_placement(model, config, device)
    dist.barrier()  # every rank's share of a disk cache is written
    offload_cached_encoders(model, config, device)
    if config.release_text_encoder:
        release_text_encoders(model)
        cb.log("text encoder(s) released after caching: reload the model to encode new prompts")
    return latents_from, text_from
