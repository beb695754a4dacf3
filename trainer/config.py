"""TrainConfig: every training parameter under kohya-ss/sd-scripts' name, TOML in and out.

The CLI, the ComfyUI nodes and the metadata written into the LoRA all use this one object, so a
run started from a graph can be repeated headless with the same values.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TrainerError
from .names import safe_name


@dataclass
class TrainConfig:
    # model
    pretrained_model_name_or_path: str = ""
    model_family: str = "auto"  # auto | sdxl | sd15 | kolors
    vae: str = ""  # optional separate VAE (e.g. sdxl-vae-fp16-fix)
    tokenizer_dir: str = ""  # for single-file checkpoints, which carry no tokenizer
    # data
    train_data_dir: str = ""
    dataset_manifest: str = ""  # instead of train_data_dir: a .jsonl the LoRA Train node wrote (data/manifest.py)
    resolution: str = "1024"  # "512" or "W,H" such as "512,768"
    dataset_repeats: int = 1  # for images not in a kohya "N_name" subfolder
    enable_bucket: bool = False  # aspect-ratio buckets instead of one cropped size
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024  # 2048 is usual for SDXL
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False  # never enlarge small images
    validation_split: float = 0.0  # share of images held out for a validation loss per epoch
    reg_data_dir: str = ""  # regularization images (kohya "N_class" subfolders or plain images)
    prior_loss_weight: float = 1.0  # loss weight of the regularization samples
    caption_extension: str = ".txt"
    class_tokens: str = ""  # trigger word: caption for images without a caption file
    shuffle_caption: bool = False
    keep_tokens: int = 0  # the first N tags stay in place when shuffling / dropping tags
    keep_tokens_separator: str = ""  # or: everything before this separator stays in place
    caption_separator: str = ","
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    caption_dropout_rate: float = 0.0  # share of steps an image trains with an empty caption
    caption_tag_dropout_rate: float = 0.0  # share of (non-kept) tags dropped per step
    caption_dropout_every_n_epochs: int = 0  # every Nth epoch trains with empty captions
    caption_prefix: str = ""  # put before every caption (kohya: after the trigger handling)
    caption_suffix: str = ""  # put after every caption
    secondary_separator: str = ""  # joins tags that shuffle/drop as one; becomes caption_separator
    enable_wildcard: bool = False  # "{a|b|c}" in a caption: one alternative per step
    token_warmup_min: int = 1  # start with this many tags ...
    token_warmup_step: float = 0  # ... growing to all of them by this step (a ratio of the run below 1)
    weighted_captions: bool = False  # "(word:1.2)" weights in captions scale that word's embedding
    max_token_length: int | None = None  # 75 (None), 150 or 225: captions longer than 75 tokens in chunks
    dataset_config: str = ""  # kohya's dataset TOML ([general], [[datasets]], [[datasets.subsets]])
    masked_loss: bool = False  # weight the loss by a mask per image (white = train), from conditioning_data_dir
    alpha_mask: bool = False  # the images' alpha channel is their loss mask (no alpha: the whole image)
    conditioning_data_dir: str = ""  # with masked_loss: masks named like the images (any image format)
    # network
    network_module: str = "networks.lora"
    network: str = ""  # LoRA | LoCon | LoHa | LoKr | DoRA | OFT: sets network_module / network_args for it
    network_dim: int = 16
    network_alpha: float = 8.0
    conv_dim: int = 0  # > 0: also LoRA on ResNet / up- / down-sampler convs (kohya's LoCon)
    conv_alpha: float = 1.0
    network_dropout: float = 0.0  # dropout on the LoRA path (peft lora_dropout)
    network_args: list[str] = field(default_factory=list)  # kohya's "key=value" list: conv_dim, conv_alpha, target ...
    network_weights: str = ""  # start from this LoRA file (continue training it)
    dim_from_weights: bool = False  # take network_dim (and conv_dim) from network_weights
    network_train_text_encoder_only: bool = False  # LoRA on the text encoder(s) only, the UNet untouched
    scale_weight_norms: float | None = None  # max-norm: scale each module's up@down down to this norm
    # optimisation
    preset: str = ""  # anime | realistic | sdxl_character | kolors: fills defaults, your values win
    optimizer_type: str = "AdamW"  # any name kohya accepts (train/optimizers.py), a torch.optim class, "module.Class"
    optimizer_args: list[str] = field(default_factory=list)  # e.g. ["weight_decay=0.01", "betas=(0.9,0.99)"]
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None  # > 0 also trains a LoRA on the CLIP text encoder(s)
    network_train_unet_only: bool = False  # force UNet-only even when text_encoder_lr is set
    lr_scheduler: str = "constant"  # constant | constant_with_warmup | linear | cosine | cosine_with_restarts | ... (lr_schedule.py)
    lr_warmup_steps: float = 0  # a step count, or a ratio of the total steps when below 1
    lr_scheduler_num_cycles: int = 1  # restarts of cosine_with_restarts (seed 000: 3-5)
    lr_scheduler_power: float = 1.0  # polynomial
    lr_scheduler_type: str = ""  # a scheduler class "module.Class" instead of lr_scheduler
    lr_scheduler_args: list[str] = field(default_factory=list)  # its "key=value" arguments
    lr_decay_steps: float = 0  # warmup_stable_decay: decay steps (a ratio of the run below 1)
    lr_scheduler_timescale: int | None = None  # inverse_sqrt: timescale (default: the warmup steps)
    lr_scheduler_min_lr_ratio: float | None = None  # cosine_with_min_lr / warmup_stable_decay floor
    max_train_epochs: int = 10
    max_train_steps: int = 0  # 0: derived from epochs
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1  # optimizer step every N batches (effective batch = batch x N)
    mixed_precision: str = "no"  # no | fp16 | bf16
    full_bf16: bool = False  # LoRA weights, gradients and optimizer state in bf16 too (less memory)
    full_fp16: bool = False  # the same in fp16 (needs mixed_precision = fp16)
    no_half_vae: bool = False  # keep the VAE in fp32 whatever mixed_precision says
    fp8_base: bool = False  # frozen UNet (and text encoder) weights stored in float8, computed in the autocast dtype
    fp8_base_unet: bool = False  # the same for the UNet only
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    # noise and loss
    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int = 0  # seed 000: 6-10
    multires_noise_discount: float = 0.3  # seed 000: 0.3-0.8
    min_timestep: int | None = None
    max_timestep: int | None = None
    min_snr_gamma: float | None = None  # 5 is usual
    v_parameterization: bool = False  # for v-prediction models (SD2-style)
    zero_terminal_snr: bool = False  # rescale the noise schedule to zero SNR at the last timestep
    scale_v_pred_loss_like_noise_pred: bool = False  # v-prediction: weight the loss as noise prediction's
    v_pred_like_loss: float | None = None  # add this much of a v-prediction-like loss
    debiased_estimation_loss: bool = False  # weight the loss by 1/sqrt(SNR)
    ip_noise_gamma: float | None = None  # input perturbation noise (0.1 is usual)
    ip_noise_gamma_random_strength: bool = False  # ... at a random strength in [0, ip_noise_gamma]
    loss_type: str = "l2"  # l2 | l1 | huber | smooth_l1
    huber_c: float = 0.1
    huber_schedule: str = "snr"  # constant | exponential | snr
    huber_scale: float = 1.0
    seed: int = 42
    clip_skip: int = 0  # kohya's: 1 = last CLIP layer, 2 = penultimate; 0 = the family default
    # caching (kohya names): encode every image / caption once instead of every step
    cache_latents: bool = False
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = False
    cache_text_encoder_outputs_to_disk: bool = False
    cache_dir: str = ""  # where disk caches go; default <output_dir>/cache
    release_text_encoder: bool = False  # free the text encoder(s) once their outputs are cached
    # output
    output_dir: str = "output"
    output_name: str = "lora"
    save_precision: str = "fp16"  # fp16 | bf16 | fp32
    save_model_as: str = "safetensors"
    save_every_n_epochs: int = 0  # 0: only the final save
    save_last_n_epochs: int = 0  # keep only the newest N epoch saves (0: keep all)
    save_state: bool = False  # also save the exact training state at every epoch end
    save_every_n_steps: int = 0  # also save the LoRA every N steps
    save_last_n_steps: int = 0  # keep step saves of only the last N steps (0: keep all)
    save_last_n_steps_state: int = 0  # the same for the states saved with them
    save_last_n_epochs_state: int = 0  # keep only the newest N epoch states (0: as save_last_n_epochs)
    save_state_on_train_end: bool = False  # save the training state once at the end
    resume: str = ""  # a <output_name>-state folder to continue from
    # metadata people share by (kohya's names; written into the file's header)
    no_metadata: bool = False  # write no metadata at all
    training_comment: str = ""
    metadata_title: str = ""  # default: output_name
    metadata_author: str = ""
    metadata_description: str = ""
    metadata_license: str = ""
    metadata_tags: str = ""  # comma separated
    metadata_trigger_phrase: str = ""  # default: class_tokens
    metadata_usage_hint: str = ""
    metadata_thumbnail: str = ""  # an image file or data URL; default: the last sample image
    # logging
    log_with: str = ""  # tensorboard (when installed)
    logging_dir: str = ""  # where the event files go
    log_prefix: str = ""  # put before the run's log folder name
    # preview samples during and after training (kohya's prompt-line options)
    sample_prompts: list[str] = field(default_factory=list)
    sample_every_n_epochs: int = 0
    sample_every_n_steps: int = 0
    sample_at_first: bool = False
    sample_steps: int = 20
    sample_cfg: float = 7.0
    sample_sampler: str = "euler_a"

    # -- derived ------------------------------------------------------------------------------
    def size(self) -> tuple[int, int]:
        """(width, height) from ``resolution``; both multiples of 64."""
        text = str(self.resolution).replace("x", ",").replace(" ", "")
        try:
            values = [int(v) for v in text.split(",") if v]
        except ValueError:
            raise TrainerError(f"resolution '{self.resolution}' is not a number: use e.g. 1024 or 512,768.") from None
        if len(values) == 1:
            values *= 2
        if len(values) != 2 or min(values) <= 0:
            raise TrainerError(f"resolution '{self.resolution}': give one size (1024) or width,height (512,768).")
        for i, v in enumerate(values):
            if v % 64:
                lo, hi = v // 64 * 64, (v // 64 + 1) * 64
                if not (self.enable_bucket and lo):
                    raise TrainerError(f"resolution {v} is not a multiple of 64: use {lo or 64} or {hi}.")
                # buckets only take the resolution's area (kohya trains "512,650" that way): round down
                warnings.warn(f"note: resolution {v} is not a multiple of 64; the buckets use {lo}", stacklevel=2)
                values[i] = lo
        return values[0], values[1]

    def validate(self) -> "TrainConfig":
        from .lora.lycoris_spec import LYCORIS_MODULE, lycoris_spec, require_lycoris
        from .lora.network_choice import apply_network_choice

        self._safe_output_name()
        apply_network_choice(self)
        if self.network_module == LYCORIS_MODULE:  # bad LyCORIS args stop here, before anything loads
            require_lycoris()
            lycoris_spec(self)
        self.size()
        if self.cache_text_encoder_outputs and (self.shuffle_caption or self.caption_dropout_rate
                                                 or self.caption_tag_dropout_rate or self.token_warmup_step):
            raise TrainerError("cache_text_encoder_outputs encodes each caption once, so shuffle_caption, "
                               "caption (tag) dropout and token warmup cannot work with it: turn one of them off.")
        if self.max_token_length not in (None, 0, 75, 150, 225):
            # kohya's parser lists 75/150/225 but a TOML value is not checked: it encodes
            # max_token_length // 75 rows of 75 tokens; so do we, with a note
            rows = min(max(int(self.max_token_length) // 75, 1), 3)
            warnings.warn(f"note: max_token_length = {self.max_token_length!r} is not 75, 150 or 225: captions are "
                          f"read as {75 * rows} tokens ({rows} x 75, as kohya encodes it)", stacklevel=2)
            self.max_token_length = None if rows == 1 else 75 * rows
        if self.release_text_encoder and self.enable_wildcard:
            raise TrainerError("enable_wildcard draws a new caption text each step, which needs the text encoder: "
                               "turn off release_text_encoder (caching keeps each drawn text once).")
        if self.cache_text_encoder_outputs and self.trains_text_encoder:
            raise TrainerError("cache_text_encoder_outputs cannot be used while training the text encoder "
                               "(text_encoder_lr is set): set network_train_unet_only or turn caching off.")
        if self.full_bf16 and self.mixed_precision != "bf16":
            raise TrainerError("full_bf16 needs mixed_precision = bf16.")
        if self.full_fp16 and self.mixed_precision != "fp16":
            raise TrainerError("full_fp16 needs mixed_precision = fp16 (or use full_bf16 with bf16).")
        if (self.fp8_base or self.fp8_base_unet) and self.mixed_precision == "no":
            raise TrainerError("fp8_base computes in the mixed-precision dtype: set mixed_precision = bf16 or fp16.")
        if self.release_text_encoder and not self.cache_text_encoder_outputs:
            raise TrainerError("release_text_encoder frees the text encoder after caching its outputs: "
                               "also set cache_text_encoder_outputs.")
        if self.release_text_encoder and self.sample_prompts:
            raise TrainerError("release_text_encoder leaves nothing to encode sample prompts with: "
                               "remove sample_prompts or keep the text encoder.")
        if self.conditioning_data_dir and not self.masked_loss:
            raise TrainerError("conditioning_data_dir holds the masks of masked_loss: also set masked_loss = true "
                               "(or remove conditioning_data_dir).")
        if self.cache_latents and (self.flip_aug or self.color_aug or self.random_crop):
            raise TrainerError("cache_latents encodes each image once, so flip_aug, color_aug and random_crop "
                               "cannot vary it: turn caching or the augmentation off.")
        for name in ("network_dim", "train_batch_size", "max_train_epochs", "dataset_repeats",
                     "gradient_accumulation_steps"):
            if int(getattr(self, name)) < 1:
                raise TrainerError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.network_alpha <= 0:
            raise TrainerError(f"network_alpha must be positive (got {self.network_alpha}); kohya's usual is dim/2.")
        if self.learning_rate <= 0:
            raise TrainerError(f"learning_rate must be positive (got {self.learning_rate}).")
        choices = {"mixed_precision": ("no", "fp16", "bf16"), "save_precision": ("fp16", "bf16", "fp32", "float")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainerError(f"{name} '{getattr(self, name)}' is not one of {', '.join(allowed)}.")
        return self

    def _safe_output_name(self) -> None:
        """output_name names files and folders: a shared TOML must not write outside output_dir."""
        safe = safe_name(self.output_name)
        if safe != self.output_name:
            warnings.warn(f"output_name {self.output_name!r} is not a plain file name: using {safe!r}", stacklevel=3)
            self.output_name = safe

    @property
    def trains_text_encoder(self) -> bool:
        if self.network_train_unet_only:
            return False
        return bool(self.text_encoder_lr) or (self.network_train_text_encoder_only and self.text_encoder_lr is None)

    # -- TOML ---------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, source: str = "config", base_dir: Path | None = None) -> "TrainConfig":
        """Flat or sectioned (kohya GUI style) dict. kohya's other option names get their answer
        (kohya_options: alias, note or refusal); other unknown keys warn with a suggestion.
        ``base_dir``: the config file's folder, for relative files it names (sample_prompts)."""
        from .kohya_options import translate

        flat: dict = {}
        for key, value in values.items():
            if isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        known = set(cls.field_names())
        flat = translate(flat, known, source, base_dir)
        unknown = [k for k in flat if k not in known]
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else " (not supported yet; ignored)"
            warnings.warn(f"{source}: unknown setting '{key}'{hint}", stacklevel=2)
        if flat.get("preset"):
            from .presets import apply_preset

            flat = apply_preset(flat["preset"], flat) | {"preset": flat["preset"]}
        config = cls(**{k: v for k, v in flat.items() if k in known})
        return config._coerced()

    def _coerced(self) -> "TrainConfig":
        """Cast values read from TOML / widgets to the field types (ints given as floats etc.)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            try:
                if kind == "str" and (value is None or value is False):
                    setattr(self, f.name, "")  # kohya configs write `resume = false` / null for "not set"
                    continue
                if value is None or kind.startswith("list"):
                    continue
                if kind.startswith("int"):
                    setattr(self, f.name, int(value))
                elif kind.startswith("float"):
                    setattr(self, f.name, float(value))
                elif kind == "bool":
                    setattr(self, f.name, value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes"))
                elif kind == "str":
                    setattr(self, f.name, str(value))
            except (TypeError, ValueError):
                raise TrainerError(f"{f.name} = {value!r} is not a valid {kind}.") from None
        if isinstance(self.sample_prompts, str):
            self.sample_prompts = [p for p in self.sample_prompts.splitlines() if p.strip()]
        if isinstance(self.optimizer_args, str):
            self.optimizer_args = self.optimizer_args.split()
        self._safe_output_name()
        return self

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if not self.trains_text_encoder and not self.network_train_unet_only:
            values["network_train_unet_only"] = True  # read back as a kohya file, it must not train the TE
        return values

    def to_toml(self) -> str:
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'
