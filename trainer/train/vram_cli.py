"""python -m trainer vram --config run.toml: the GPU memory a run needs, item by item, and (with
--free) which options would make it fit. Nothing is loaded: sizes come from the architectures."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError


def add_vram_parser(sub) -> None:
    """Register the ``vram`` subcommand on cli.build_parser()'s subparsers."""
    p = sub.add_parser("vram", help="estimate the GPU memory a config needs, item by item")
    p.add_argument("--config", help="run.toml with kohya-style keys")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value (repeatable)")
    p.add_argument("--family", choices=["sd15", "sdxl", "kolors"],
                   help="default: model_family, or detected from pretrained_model_name_or_path")
    p.add_argument("--free", type=float, metavar="GB", help="free GPU memory in GB: also name the options that fit it")
    p.set_defaults(func=vram_command)


def config_family(config) -> str:
    """The family to estimate for: model_family, else detected from the model on disk."""
    if config.model_family and config.model_family != "auto":
        return config.model_family
    path = Path(config.pretrained_model_name_or_path) if config.pretrained_model_name_or_path else None
    if path is not None and path.is_dir():
        from ..models.detect import detect_folder_family

        return detect_folder_family(path)
    if path is not None and path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        from ..models.detect import detect_checkpoint_family

        with safe_open(str(path), framework="pt") as f:
            return detect_checkpoint_family(f.keys())
    raise TrainerError("Which model family? Set model_family in the config or pass --family sd15 | sdxl | kolors.")


def vram_command(args) -> int:
    from ..config_files import config_from_file, parse_overrides
    from ..config import TrainConfig
    from ..progress import quiet_libraries
    from .vram import GB, estimate_vram, format_changes, suggest_fit

    quiet_libraries()
    values = config_from_file(args.config).to_dict() if args.config else {}
    values.update(parse_overrides(getattr(args, "set", None)))
    config = TrainConfig.from_dict(values, source=args.config or "command line").validate()
    family = args.family or config_family(config)
    estimate = estimate_vram(config, family)
    print(estimate.describe())
    if args.free is not None:
        free = int(args.free * GB)
        if estimate.total <= free:
            print(f"fits in {args.free:g} GB as it is")
            return 0
        fitted, changes = suggest_fit(config, family, free)
        if fitted.total <= free:
            print(f"to fit {args.free:g} GB: {format_changes(changes)} (est. {fitted.total / GB:.2f} GB)")
        else:
            tried = f" with {format_changes(changes)}" if changes else ""
            print(f"does not fit {args.free:g} GB even{tried}: est. {fitted.total / GB:.2f} GB ({fitted.peak_phase})")
    return 0
