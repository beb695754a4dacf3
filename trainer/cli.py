"""python -m trainer {train,sample,demo,make-tiny,convert,vram}: the headless face of the trainer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import TrainerError


def cmd_train(args) -> int:
    """One process, or one of several under torchrun / accelerate launch (rank 0 writes)."""
    from .config import TrainConfig
    from .config_files import config_from_file, parse_overrides
    from .progress import quiet_libraries, tqdm_callbacks
    from .train import distributed
    from .train.loop import train
    from .train.snapshots import save_final

    quiet_libraries()
    values = {}
    if args.config:
        values.update(config_from_file(args.config).to_dict())
    values.update(parse_overrides(args.set))
    config = TrainConfig.from_dict(values, source=args.config or "command line")
    dist = distributed.from_environment()
    callbacks, close = tqdm_callbacks()
    try:
        result = train(config, callbacks=callbacks, dist=dist)
    finally:
        close()
        distributed.shutdown(dist)
    if not dist.is_main:
        return 0
    files = save_final(result, config)
    state = "stopped early" if result.stopped else "done"
    print(f"{state}: {result.steps} steps, {result.seconds_per_step:.3f} s/step, "
          f"final loss {result.losses[-1]:.4f}" if result.losses else state)
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_sample(args) -> int:
    from .atomic import save_image
    from .lora.apply import apply_lora
    from .models.loader import load_model
    from .progress import quiet_libraries
    from .sample import generate

    quiet_libraries()
    model = load_model(args.model, args.family, args.dtype, tokenizer_dir=args.tokenizer_dir)
    if args.lora:
        apply_lora(model, args.lora, args.strength)
    image = generate(model, args.prompt, args.negative, args.seed, args.steps, args.cfg, args.width,
                     args.height, args.sampler)
    print(f"image: {save_image(args.out, image)}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), args.family, args.epochs, args.pretrain_steps)
    return 0


def cmd_make_tiny(args) -> int:
    from .progress import quiet_libraries
    from .tiny.build import write_tiny_checkpoint, write_tiny_model

    quiet_libraries()
    out = Path(args.out)
    if args.single_file:
        print(f"checkpoint: {write_tiny_checkpoint(args.family, out)}")
    else:
        print(f"model folder: {write_tiny_model(args.family, out)}")
    return 0


def cmd_convert(args) -> int:
    from .lora.convert import convert_file

    out, summary = convert_file(args.input, args.output, args.family, args.alpha, args.model, args.precision)
    print(f"converted: {out}")
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .sample import SAMPLERS

    parser = argparse.ArgumentParser(prog="python -m trainer", description="LoRA trainer for SD1.5, SDXL and Kolors.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a LoRA from a TOML config (kohya parameter names)")
    p.add_argument("--config", help="run.toml with kohya's keys, or a kohya_ss GUI preset / config .json")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="text-to-image with an optional LoRA")
    p.add_argument("--model", required=True, help="diffusers folder or .safetensors checkpoint")
    p.add_argument("--family", default="auto", help="auto, sdxl, sd15 or kolors")
    p.add_argument("--tokenizer_dir", help="tokenizer folder for single-file checkpoints")
    p.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16")
    p.add_argument("--lora", help="LoRA .safetensors file")
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--sampler", default="euler_a", choices=list(SAMPLERS))
    p.add_argument("--out", default="sample.png", help="output PNG")
    p.set_defaults(func=cmd_sample)

    from .demo import EPOCHS, PRETRAIN_STEPS

    p = sub.add_parser("demo", help="train-then-generate on a tiny built-in model (offline, ~1 min)")
    p.add_argument("--family", default="kolors", choices=["kolors", "sdxl", "sd15"])
    p.add_argument("--out", default="demo_output")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS,
                   help="steps teaching the tiny base model to denoise painted shapes before the LoRA")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("make-tiny", help="write a tiny model (diffusers folder or single-file checkpoint)")
    p.add_argument("--family", required=True, choices=["kolors", "sdxl", "sd15"])
    p.add_argument("--out", required=True)
    p.add_argument("--single-file", action="store_true", help="write a .safetensors checkpoint (sd15/sdxl)")
    p.set_defaults(func=cmd_make_tiny)

    p = sub.add_parser("convert", help="convert a LoRA (kohya, diffusers/peft, ComfyUI trainer, DiffSynth .ckpt) "
                                        "to the kohya .safetensors ComfyUI and A1111 load")
    p.add_argument("input", help="LoRA file: .safetensors, or a .ckpt/.pt (read without running code)")
    p.add_argument("output", help="the .safetensors to write")
    p.add_argument("--family", default="auto", choices=["auto", "kolors", "sdxl", "sd15"])
    p.add_argument("--alpha", type=float, default=None,
                   help="alpha where the file stores none (DiffSynth .ckpt: default 4.0; others: the rank)")
    p.add_argument("--model", help="model folder whose UNet config to map onto (default: the real SD1.5/SDXL one)")
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
    p.set_defaults(func=cmd_convert)

    from .train.vram_cli import add_vram_parser

    add_vram_parser(sub)  # python -m trainer vram --config run.toml [--family sdxl] [--free 8]
    from .runs.worker import add_background_parser

    add_background_parser(sub)  # python -m trainer background --config <run>/<name>.toml
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
