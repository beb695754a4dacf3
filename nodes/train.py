"""Training Options and LoRA Train: build the trainer's TrainConfig from widgets and run train()."""

from __future__ import annotations

import json
from pathlib import Path

from ..trainer.errors import TrainerError
from ..trainer.lora.network_choice import NETWORKS
from . import comfy_env
from .headless import write_headless_run
from .train_runs import RUN_IN, RUN_IN_TIP, graph_run, start_in_background
from .images import to_image_tensor

PRESETS = ["none", "anime", "realistic", "sdxl_character", "kolors"]
LOSS_EVENT = "lt.train.loss"  # {"node", "step", "total", "loss", "smoothed"} every step, for js/

# (widget, type, default, extra, tooltip): the common settings shown on LoRA Train itself
MAIN = [
    ("preset", PRESETS, "none", {}, "Seed 000/001 recommendations: anime (repeats 8, 20 epochs, dim 16), realistic "
     "(15 x 10, dim 64), sdxl_character (10 x 10, unet lr 2e-4, dim 8, alpha 4), kolors (rank 16, alpha 4). "
     "Widgets you change win over the preset."),
    ("output_name", "STRING", "my_lora", {}, "Name of the LoRA and of its training folder under output/lora_trainer/."),
    ("resolution", "STRING", "1024", {}, "Training size: 1024, 512, or width,height such as 768,1024 (multiples of 64)."),
    ("network_dim", "INT", 16, {"min": 1, "max": 256}, "LoRA rank: 8-32 for characters/anime, 64-128 realistic."),
    ("network_alpha", "FLOAT", 8.0, {"min": 0.01, "max": 256.0, "step": 0.5}, "Usually half of network_dim."),
    ("learning_rate", "FLOAT", 1e-4, {"min": 1e-7, "max": 1.0, "step": 1e-5, "round": False},
     "UNet learning rate (seed 000: 1e-4; SDXL characters 2e-4). Prodigy wants 1.0."),
    ("max_train_epochs", "INT", 10, {"min": 1, "max": 1000}, "Passes over images x repeats (anime 20, realistic 10)."),
    ("train_batch_size", "INT", 1, {"min": 1, "max": 64}, "Images per step; steps = images x repeats x epochs / batch."),
    ("mixed_precision", ["fp16", "bf16", "no"], "fp16", {}, "fp16 is seed 000's advice; bf16 on newer GPUs and CPUs."),
    ("gradient_checkpointing", "BOOLEAN", True, {}, "Saves a lot of memory for ~20% more time."),
    ("seed", "INT", 42, {"min": 0, "max": 2**31 - 1, "control_after_generate": False},
     "Same seed, same data, same settings: same LoRA (fixed, so queueing again after Cancel resumes)."),
]


NETWORK_TIP = ("What is trained (docs/adapters.md: sizes, speed). LoRA: characters, concepts (seed 000). LoCon: LoRA + "
               "the ResNet convs, for styles. LoHa / LoKr: LyCORIS, LoKr gives the smallest files. DoRA: LoRA with a "
               "learned magnitude per channel, often better detail. OFT: rotates features, keeps the model's look. "
               "LyCORIS types take ~1.7-2.1x LoRA's step time and 1.5-2x its memory (SD1.5, CPU). Training "
               "Options' network_module / network_args override this.")


def widgets(spec) -> dict:
    out = {}
    for name, kind, default, extra, tip in spec:
        if isinstance(kind, list):
            out[name] = (kind, {"default": default, "tooltip": tip})
        else:
            out[name] = (kind, {"default": default, "tooltip": tip, **extra})
    return out


def changed_widgets(values: dict) -> dict:
    """Widget values the user changed from their defaults (a preset fills the others)."""
    defaults = {name: default for name, _, default, _, _ in MAIN}
    return {k: v for k, v in values.items() if k in defaults and v != defaults[k]}


class TrainingOptions:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_OPTIONS",)
    RETURN_NAMES = ("options",)
    FUNCTION = "build"
    DESCRIPTION = "Every other kohya-ss setting, as TOML lines (name = value), for LoRA Train's options input."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "settings": ("STRING", {"multiline": True, "default": 'lr_scheduler = "cosine_with_restarts"\n'
                                    'lr_scheduler_num_cycles = 3\noptimizer_type = "AdamW8bit"\n'
                                    'cache_latents = true\n',
                                    "tooltip": "kohya parameter names, TOML syntax: conv_dim, noise_offset, "
                                    "multires_noise_iterations, min_snr_gamma, shuffle_caption, keep_tokens, "
                                    "enable_bucket, save_every_n_epochs, sample_prompts, ... (see README)."}),
        }, "optional": {"options": ("LT_OPTIONS", {"tooltip": "More options to merge (later ones win)."})}}

    def build(self, settings, options=None):
        import tomllib

        from ..trainer.config import TrainConfig

        try:
            values = tomllib.loads(settings)
        except tomllib.TOMLDecodeError as err:
            raise TrainerError(f"Training Options: not valid TOML ({err}). Write one name = value per line.") from None
        merged = {**(options or {}), **values}
        TrainConfig.from_dict(merged, source="Training Options").validate()  # fail here, not mid-run
        return (merged,)


class LoraTrain:
    CATEGORY = "LoRA Trainer"
    RETURN_TYPES = ("LT_LORA", "LT_PIPELINE", "IMAGE", "LORA_MODEL")
    RETURN_NAMES = ("lora", "pipeline", "loss_chart", "lora_model")
    OUTPUT_TOOLTIPS = ("For LoRA Save, LoRA Apply, LoRA Load's pipeline path.", "The model with the LoRA, for Sampler "
                       "preview.", "The loss per step.", "ComfyUI's LORA_MODEL (kohya keys): for LoRA Apply, core "
                       "LoraModelLoader and SaveLoRA.")
    FUNCTION = "train"
    OUTPUT_NODE = True
    DESCRIPTION = ("Trains a LoRA on a pipeline (Kolors/SDXL Loader) or on the MODEL, CLIP and VAE of "
                   "CheckpointLoaderSimple, sharing their weights. Cancel stops within a step; queueing again resumes.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"dataset": ("LT_DATASET", {"tooltip": "From Dataset Loader."}),
                             **widgets(MAIN)},
                "optional": {"pipeline": ("LT_PIPELINE", {"tooltip": "From Kolors/SDXL Loader (Kolors, or any model "
                                          "you load there). Leave empty when MODEL/CLIP/VAE are connected."}),
                             "model": ("MODEL", {"tooltip": "SD1.5 or SDXL MODEL from CheckpointLoaderSimple: trained "
                                       "in place of a pipeline, its weights shared (no second copy) and left as they "
                                       "were."}),
                             "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint (with a MODEL)."}),
                             "vae": ("VAE", {"tooltip": "The VAE of the same checkpoint (with a MODEL)."}),
                             "options": ("LT_OPTIONS", {"tooltip": "More kohya settings from Training Options."}),
                             "sample_prompt": ("STRING", {"default": "", "multiline": True, "tooltip":
                                               "Optional prompt(s), one per line, sampled every epoch and shown here."}),
                             # last, so workflows saved before it still map their widget values
                             "network": (list(NETWORKS), {"default": "LoRA", "tooltip": NETWORK_TIP}),
                             "run_in": (RUN_IN, {"default": "this graph", "tooltip": RUN_IN_TIP})},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def train(self, dataset, pipeline=None, model=None, clip=None, vae=None, options=None, sample_prompt="",
              unique_id=None, prompt=None, network="LoRA", run_in="this graph", **widget_values):
        from ..trainer.chart import loss_chart
        from ..trainer.config import TrainConfig
        from ..trainer.names import inside, safe_name
        from ..trainer.train.loop import Callbacks, train

        name = safe_name(widget_values["output_name"])
        preset = widget_values.get("preset", "none")
        # with a preset, only the widgets the user changed override it
        chosen = dict(widget_values) if preset == "none" else changed_widgets(widget_values)
        values = {**chosen, **(options or {}), "output_name": name}
        values.pop("preset", None)
        if network != "LoRA" or not {"network_module", "network", "network_args"} & set(options or {}):
            values.setdefault("network", network)  # Training Options' kohya/LyCORIS settings win
        if preset != "none":
            values["preset"] = preset
        prompts = [p for p in sample_prompt.splitlines() if p.strip()]
        if prompts:
            values.setdefault("sample_prompts", prompts)
            values.setdefault("sample_every_n_epochs", 1)
        run_dir = inside(comfy_env.output_dir() / "lora_trainer", name)
        pipeline, model_note = model_for_run(pipeline, model, clip, vae, prompt, unique_id, values)
        values.update(output_dir=str(run_dir), pretrained_model_name_or_path=pipeline.source)
        config = TrainConfig.from_dict(values, source="LoRA Train")
        state = run_dir / f"{name}-state" / "progress.json"
        if state.is_file() and same_run(state, config):
            config.resume = str(state.parent)

        settings = dict(getattr(pipeline, "cli_settings", {}))
        note = settings.pop("note", model_note)
        toml, headless = write_headless_run(config, dataset, run_dir, settings, note)
        if run_in != "this graph":
            return start_in_background(config, toml, pipeline, run_in, len(self.RETURN_TYPES), headless)
        if getattr(pipeline, "host", None) is None:  # ComfyUI's own models wait in RAM while ours trains
            comfy_env.free_comfy_models()
        memory_warning = vram_warning(config, pipeline)
        if memory_warning:
            print(f"warning: {memory_warning}")
        bar = {}

        def on_start(total, _):
            bar["p"] = comfy_env.Progress(total, unique_id)

        def on_step(step, total, loss):
            bar["p"].update(step)

        def on_loss(step, loss, smoothed):
            comfy_env.send_event(LOSS_EVENT, {"node": unique_id, "step": step, "total": bar["p"].total,
                                              "loss": loss, "smoothed": smoothed})

        def on_samples(step, files):
            from PIL import Image

            bar["p"].update(step, ("PNG", Image.open(next(iter(files.values()))), 512))

        callbacks = Callbacks(on_start=on_start, on_step=on_step, on_loss=on_loss, on_samples=on_samples,
                              should_stop=comfy_env.interrupted, log=print)
        with graph_run(run_dir, pipeline) as status, comfy_env.on_device(pipeline):
            result = train(config, model=pipeline, dataset=dataset, callbacks=status.callbacks(callbacks))
            status.finish("stopped" if result.stopped else "done")
        comfy_env.release_memory()
        if result.stopped:  # Cancel or the panel's Stop: state is saved, queueing again resumes
            from ..trainer.train.failure import leave_as_given

            leave_as_given(result.model)  # the cached pipeline carries no half-trained LoRA
            comfy_env.raise_if_interrupted()
            raise TrainerError(f"Stopped from the Training panel at step {result.steps}: the state is saved, "
                               "queue the prompt again to resume.")
        chart = loss_chart(result.losses)
        text = ([f"warning: {memory_warning}"] if memory_warning else []) + [headless]
        # the node's own chart redraws from these points (js/lora_trainer.js): no image below it
        ui = {"text": ["\n\n".join(text)], "lt_chart": [{"total": result.total_steps, "points": chart_points(result.losses)}]}
        lora_model = {k: v.detach() for k, v in result.lora.tensors.items()} if result.lora else {}
        return {"ui": ui, "result": (result.lora, result.model, to_image_tensor(chart), lora_model)}


def chart_points(losses: list[float], most: int = 2000) -> list[list[float]]:
    """[step, loss, smoothed] for the node's chart, every k-th step when there are more than ``most``."""
    from ..trainer.chart import smooth

    every = max(1, -(-len(losses) // most))
    return [[step, round(loss, 6), round(avg, 6)] for step, (loss, avg) in enumerate(zip(losses, smooth(losses)), 1)
            if step % every == 0 or step == len(losses)]


def model_for_run(pipeline, model, clip, vae, prompt, unique_id, values: dict):
    """The LT_PIPELINE to train: the connected pipeline, or one over ComfyUI's MODEL/CLIP/VAE
    (comfy_models.py). Returns it with a note for the headless command when the CLI cannot load
    the same model by itself."""
    from .comfy_models import hosted_pipeline, prediction_of

    if (pipeline is None) == (model is None):
        raise TrainerError("LoRA Train needs exactly one model: connect either a pipeline (Kolors/SDXL Loader) or "
                           "the MODEL, CLIP and VAE of CheckpointLoaderSimple.")
    if pipeline is not None:
        return pipeline, ""
    checkpoint = checkpoint_file(prompt, unique_id)
    source = str(checkpoint) if checkpoint else "ComfyUI MODEL"
    if prediction_of(model) == "V_PREDICTION" and "v_parameterization" not in values:
        values["v_parameterization"] = True  # ComfyUI knows it from the checkpoint
        print("note: the MODEL is a v-prediction model: training with v_parameterization = true")
    hosted = hosted_pipeline(model, clip, vae, source)
    from .model import comfy_tokenizer_dir

    hosted.cli_settings = {"model_family": hosted.family.name, "tokenizer_dir": str(comfy_tokenizer_dir() or "")}
    note = "" if checkpoint else ("The MODEL did not come straight from CheckpointLoaderSimple: set "
                                  "pretrained_model_name_or_path in the .toml to its checkpoint file.")
    return hosted, note


def checkpoint_file(prompt, unique_id):
    """The checkpoint behind LoRA Train's ``model`` input when it links straight to a core
    CheckpointLoaderSimple in the queued prompt (for the headless command and ss_sd_model_name)."""
    node = (prompt or {}).get(str(unique_id), {})
    link = node.get("inputs", {}).get("model")
    if not isinstance(link, list):
        return None
    source = prompt.get(str(link[0]), {})
    if source.get("class_type") not in ("CheckpointLoaderSimple", "CheckpointLoader"):
        return None
    return comfy_env.full_path("checkpoints", str(source.get("inputs", {}).get("ckpt_name", "")))


def vram_warning(config, pipeline) -> str | None:
    """A line when the run's estimated GPU memory exceeds what is free (naming the options that
    would make it fit); None when it fits or there is no GPU figure to compare with. An estimate
    never stops a run: if it cannot be made, training goes ahead without it."""
    free = comfy_env.free_vram()
    if free is None:
        return None
    from ..trainer.train.vram import resident_bytes, vram_warning as estimate_warning

    try:
        # the pipeline's weights already on the GPU are in the estimate but not in the free
        # figure; this process has its CUDA context already
        return estimate_warning(config, pipeline.family.name, free + resident_bytes(pipeline), model=pipeline,
                                include_context=False)
    except Exception as err:  # noqa: BLE001 - a failed estimate must not cost the run
        print(f"note: no GPU memory estimate ({type(err).__name__}: {err})")
        return None


def same_run(progress_file: Path, config) -> bool:
    """A saved state belongs to this run when every setting but resume matches."""
    try:
        saved = json.loads(progress_file.read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError):
        return False
    mine = config.to_dict()
    return {k: v for k, v in saved.items() if k != "resume"} == {k: v for k, v in mine.items() if k != "resume"}

