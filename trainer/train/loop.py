"""train(): the one training loop the CLI and the ComfyUI nodes both call.

prepare_run() (run_setup.py) builds what is trained, on what and how; StepLoop runs its steps,
with the moments between them: samples, epoch saves, validation, states, a UI's stop request."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.dataset import Dataset
from ..errors import TrainerError
from ..lora.kohya_format import TrainedLora, build_metadata
from ..lora.max_norm import max_norm_for
from ..lora.modelspec import missing_thumbnail
from ..models.loader import LoadedModel
from .api import Callbacks, TrainResult  # noqa: F401 (Callbacks: the nodes' and the CLI's import)
from .bucketing import run_batches
from .devices import encoders_on, restore_encoders
from .distributed import Distributed
from .evaluate import dataset_loss
from .failure import as_given_if_failed
from .host_memory import reuse_freed_memory
from .micro_batch import draw_micro_batch
from .optim import evaluation_weights, finish_training, start_training
from .run_setup import RunSetup, planned_epochs, prepare_run, total_steps  # noqa: F401 (total_steps: the tests')
from .snapshots import save_outputs  # noqa: F401 (the CLI's)
from .snapshots import keep_epoch_state, remove_old_step_states, save_epoch, save_step, wants_samples
from .sources import diffusers_clip_skip  # noqa: F401 (the tests')
from .state import Progress, batches_done, save_state, state_dir, step_state_dir
from .step import diffusion_loss
from .tracker import Tracker
from .validation import overfitting_warning

NAN_HELP = ("Loss became {value} at step {step}. Likely causes: learning rate too high (try half), "
            "fp16 overflow (use bf16 or no mixed precision), or an fp16 VAE (use sdxl-vae-fp16-fix "
            "or keep the VAE in fp32). Nothing was saved from this run.")


def train(config: TrainConfig, model: LoadedModel | None = None, dataset: Dataset | None = None,
          callbacks: Callbacks | None = None, device: torch.device | None = None,
          dist: Distributed | None = None) -> TrainResult:
    """Train a LoRA as ``config`` says. Safe to call under torch.inference_mode() (ComfyUI runs
    nodes that way): everything the run creates is made outside it, as trainable tensors.

    ``dist``: this process's place in a multi-process run (distributed.from_environment()); only
    rank 0 calls the callbacks and writes files."""
    with torch.inference_mode(False), as_given_if_failed(model):
        setup = prepare_run(config, model, dataset, callbacks, device, dist or Distributed())
        return StepLoop(setup).run()


def _evaluation_weights(method):
    """kohya's optimizer_eval_fn / optimizer_train_fn around ``method``: a schedule-free optimizer
    samples, validates and saves with its evaluation weights (optim.evaluation_weights)."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with evaluation_weights(self.s.optimizer):
            return method(self, *args, **kwargs)
    return wrapped


class StepLoop:
    """The steps of one prepared run, and what happens between them."""

    def __init__(self, setup: RunSetup):
        self.s = setup
        self.result = TrainResult(None, setup.model, list(setup.progress.losses or []), 0, setup.steps, 0, 0.0)
        self.step, self.epoch, self.stopped = setup.progress.step, setup.progress.epoch, False
        self.started = time.time()
        self.step_times: list[float] = []
        self.smoothed = 0.0  # the loss's moving average, continued over a resumed run's losses
        for k, loss in enumerate(self.result.losses):
            self.smoothed = 0.9 * self.smoothed + 0.1 * loss if k else loss
        self.max_norm, self.metrics = max_norm_for(setup), {}  # scale_weight_norms
        self.here = (0, 0)  # (batch position, samples) in the epoch after this step
        self.state_at = -1  # the step of the last <name>-state written
        self.last_sample: Path | None = None  # the default thumbnail (modelspec.thumbnail)
        self.tracker = Tracker.open(setup.config, setup.optimizer, setup.network, setup.cb.log, self.started) \
            if setup.dist.is_main else Tracker()
        note = missing_thumbnail(setup.config)
        if note:
            setup.cb.log(f"note: {note}")

    def run(self) -> TrainResult:
        with self.tracker:  # the event file is closed however the run ends
            return self._run()

    def _run(self) -> TrainResult:
        s, result = self.s, self.result
        if wants_samples(s.config, self.step, None) and self.step == 0:
            self.sample("_e000000")
        start_training(s.optimizer)  # schedule-free: a resumed state was saved in eval mode
        with torch.inference_mode(False), torch.enable_grad(), reuse_freed_memory(s.device):
            while self.step < s.steps and not self.stopped:
                whole = self.run_epoch()
                if self.stopped:
                    break
                self.epoch += 1
                if whole:
                    self.epoch_end()
        self.end_state(0, 0)
        self.tidy()
        result.lora, result.steps, result.epochs = self.snapshot(), self.step, self.epoch
        result.seconds_per_step = float(np.median(self.step_times)) if self.step_times else 0.0
        result.stopped = self.stopped
        result.encoder_calls = {"vae": s.latents_from.vae_calls, "text": s.text_from.encoder_calls}
        return result

    def run_epoch(self) -> bool:
        """This epoch's batches from where the run stands; returns whether it reached the end."""
        s, cb, progress = self.s, self.s.cb, self.s.progress
        batches = run_batches(s.dataset, s.buckets, s.global_batch, s.config.seed, self.epoch, s.dist.world)
        skip = batches_done(batches, progress, s.global_batch) if self.epoch == progress.epoch else 0
        if skip and progress.global_batch not in (None, s.global_batch):
            cb.log(f"note: the state was saved with {progress.global_batch} images per step, this run takes "
                   f"{s.global_batch}: resuming after {sum(map(len, batches[:skip]))} of the epoch's samples")
        micro, loss_sum, samples = 0, 0.0, sum(map(len, batches[:skip]))
        for position, indices in enumerate(batches, 1):
            if position <= skip:
                continue  # done before the resume
            if not micro:
                t0 = time.perf_counter()
            loss_sum += self.forward_backward(indices)
            micro += 1
            samples += len(indices)
            if micro < s.accumulation and position < len(batches):
                continue  # gradient accumulation: more micro-batches before this step
            self.optimizer_step(loss_sum, micro)
            micro, loss_sum = 0, 0.0
            self.step_times.append(time.perf_counter() - t0)
            self.here = (position, samples)
            with self.saved_if_raised(position, samples):  # the step is done: a UI's interrupt keeps it
                self.after_step()
            if self.stopped:
                self.checkpoint(position, samples)
                cb.log(f"stopped at step {self.step}; resume with resume = \"{state_dir(s.config)}\"")
            if self.stopped or self.step >= s.steps:
                break
        if position < len(batches):
            self.end_state(position, samples)  # the run ends inside this epoch
        return position == len(batches)

    def forward_backward(self, indices: list[int]) -> float:
        """This rank's share of one global batch: loss, scaled backward; returns its loss share."""
        s = self.s
        s.current_epoch, s.current_step = self.epoch + 1, self.step  # what kohya's captions read
        mb = draw_micro_batch(indices, s.dist.my_slice(len(indices)), s, s.gen, s.caption_rng)
        if not mb.indices:
            return 0.0
        loss = diffusion_loss(s.model, s.scheduler, mb.latents, mb.cond, mb.time_ids, mb.noise,
                              mb.timesteps, s.autocast, s.config, mb.weights, mb.input_noise, mb.masks)
        # each rank's share of the global mean: summed over ranks, the gradient is the
        # gradient of one process running the whole global batch
        s.scaler.scale(loss * (mb.share / s.accumulation)).backward()
        return float(loss.detach()) * mb.share

    def optimizer_step(self, loss_sum: float, micro: int) -> None:
        s, params = self.s, self.s.network.params
        (loss_sum,) = s.dist.sum_gradients_(params, [loss_sum])
        if not math.isfinite(loss_sum):
            raise TrainerError(NAN_HELP.format(value=loss_sum, step=self.step + 1))
        s.scaler.unscale_(s.optimizer)
        if s.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, s.config.max_grad_norm)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        self.result.learning_rates.append(float(s.optimizer.param_groups[0]["lr"]))
        s.lr_schedule.step()
        s.optimizer.zero_grad(set_to_none=True)
        if self.max_norm:  # kohya: right after the optimizer step
            self.metrics = self.max_norm().logs()
        self.step += 1
        self.result.losses.append(loss_sum / micro)

    def after_step(self) -> None:
        """Time estimate, the UI's callbacks, step samples, the stop request."""
        s, cb, step, losses = self.s, self.s.cb, self.step, self.result.losses
        self.tracker.step(step, self.epoch, losses[-1], s.optimizer, s.lr_schedule, self.metrics)
        if len(self.step_times) == 3:
            per = float(np.median(self.step_times))
            cb.log(f"{per:.2f} s/step: about {per * (s.steps - step) / 60:.1f} min for the remaining "
                   f"{s.steps - step} steps")
        if self.metrics and step == s.progress.step + 1:  # the run's first step (also when resumed)
            m = self.metrics
            cb.log(f"scale_weight_norms {s.config.scale_weight_norms}: {m['max_norm/keys_scaled']} of "
                   f"{len(self.max_norm.pairs)} modules scaled, norm mean {m['norm/avg_key_norm']:.4f} "
                   f"max {m['max_norm/max_key_norm']:.4f} (each step in on_metrics / the progress bar)")
        if cb.on_metrics and self.metrics:
            cb.on_metrics(step, dict(self.metrics))
        if cb.on_step:
            cb.on_step(step, s.steps, losses[-1])
        if cb.on_loss:
            self.smoothed = 0.9 * self.smoothed + 0.1 * losses[-1] if len(losses) > 1 else losses[-1]
            cb.on_loss(step, losses[-1], self.smoothed)
        if wants_samples(s.config, step, None):
            self.sample(f"_s{step:06d}")
        if s.config.save_every_n_steps and step % s.config.save_every_n_steps == 0 and s.dist.is_main:
            self.step_save()
        self.stopped = step < s.steps and s.dist.any(bool(cb.should_stop and cb.should_stop()))

    def epoch_end(self) -> None:
        """kohya's epoch moments: the epoch save, samples, validation, the state."""
        s, config, epoch = self.s, self.s.config, self.epoch
        self.tracker.epoch_end(epoch)
        saving = config.save_every_n_epochs and epoch % config.save_every_n_epochs == 0 and self.step < s.steps
        if saving and s.dist.is_main:
            self.result.files[f"epoch_{epoch}"] = save_epoch(self.snapshot(), config, epoch, s.cb.log,
                                                             keep_state=lambda: self.checkpoint(0, 0))
        with self.saved_if_raised(0, 0):
            if wants_samples(config, self.step, epoch):
                self.sample(f"_e{epoch:06d}")
            if s.validation_set is not None:
                self.validate(epoch)
        if config.save_state:
            self.checkpoint(0, 0)
            if saving and s.dist.is_main:
                keep_epoch_state(config, epoch, s.cb.log)

    def end_state(self, position: int, samples: int) -> None:
        """kohya's state at the end of training (save_state, save_state_on_train_end), once."""
        config = self.s.config
        if (config.save_state or config.save_state_on_train_end) and not self.stopped and self.state_at != self.step:
            self.checkpoint(position, samples)

    def step_save(self) -> None:
        """kohya's save_every_n_steps: the LoRA, with save_state the state too; older ones removed."""
        s, config, step = self.s, self.s.config, self.step
        self.result.files[f"step_{step}"] = save_step(self.snapshot(), config, step, s.cb.log,
                                                      keep_state=lambda: self.checkpoint(*self.here))
        if config.save_state:
            self.checkpoint(*self.here, folder=step_state_dir(config, step))
            remove_old_step_states(config, step, s.cb.log)

    @_evaluation_weights
    def checkpoint(self, position: int, samples: int, folder: Path | None = None) -> None:
        """The state as it stands: <name>-state (what a stop or resume uses), or ``folder``."""
        s = self.s
        if s.dist.is_main:
            save_state(folder or state_dir(s.config), s.network.trainable, s.optimizer, s.lr_schedule, s.scaler,
                       s.gen, s.caption_rng, Progress(self.step, self.epoch, position, self.result.losses, samples,
                                                      s.global_batch), s.config)
            if folder is None:
                self.state_at = self.step

    @contextlib.contextmanager
    def saved_if_raised(self, position: int, samples: int):
        """A UI may end the run by raising from a callback (ComfyUI's Cancel raises its interrupt
        from the progress bar, i.e. inside on_step): the steps done so far are kept as a state,
        exactly as a should_stop request keeps them, and the exception goes on."""
        try:
            yield
        except BaseException:
            self.checkpoint(position, samples)
            self.s.cb.log(f"stopped at step {self.step}; resume with resume = \"{state_dir(self.s.config)}\"")
            self.tidy()
            raise

    def tidy(self) -> None:
        """The model as generating wants it: eval mode, every encoder back on the device."""
        s = self.s
        s.model.unet.eval()
        for name in s.network.text_encoders:
            getattr(s.model.pipe, name).eval()
        if s.config.gradient_checkpointing:
            s.model.unet.disable_gradient_checkpointing()
        restore_encoders(s.model, s.device)
        finish_training(s.optimizer)  # schedule-free: the model keeps the weights it is evaluated with

    @_evaluation_weights
    def snapshot(self) -> TrainedLora:
        s = self.s
        tensors, diffusers = s.network.state_dicts()
        meta = build_metadata(s.config, s.family, s.dataset, self.step, self.epoch, self.started, s.buckets,
                              tensor_names=tensors, thumbnail=self.last_sample, world=s.dist.world,
                              num_epochs=planned_epochs(s.config, s.dataset, s.buckets, s.dist.world),
                              optimizer=s.optimizer)
        return TrainedLora(tensors, meta, diffusers)

    @_evaluation_weights
    def sample(self, tag: str) -> None:
        from ..sample_prompts import write_samples

        s = self.s
        if not s.dist.is_main:
            return
        s.model.unet.eval()
        with encoders_on(s.model, s.device):
            files = write_samples(s.model, s.config, Path(s.config.output_dir) / "samples", tag)
        s.model.unet.train()
        self.result.files.update(files)
        if files:
            self.last_sample = list(files.values())[-1]
        if s.cb.on_samples:
            s.cb.on_samples(self.step, files)

    @_evaluation_weights
    def validate(self, epoch_done: int) -> None:
        s, result = self.s, self.result
        if not s.dist.is_main:
            return
        s.model.unet.eval()
        with encoders_on(s.model, s.device):  # paged-out encoders leave RAM again afterwards
            loss = dataset_loss(s.model, s.validation_set, s.width, s.height, seed=s.config.seed,
                                mixed_precision=s.config.mixed_precision,
                                clip_skip=diffusers_clip_skip(s.config.clip_skip), text_options=s.text_from.options)
        s.model.unet.train()
        result.validation_losses.append((epoch_done, loss))
        self.tracker.validation(epoch_done, loss)
        s.cb.log(f"epoch {epoch_done}: validation loss {loss:.4f} ({s.validation_set.num_images} held-out images)")
        warning = overfitting_warning(result.losses, result.validation_losses)
        if warning and warning not in result.warnings:
            result.warnings.append(warning)
            s.cb.log(f"warning: {warning}")
