"""Issue 16 item 3 against a real ComfyUI: for each algorithm and family, train a tiny adapter, load
the saved fp32 file with ComfyUI's own loader (comfy.lora.load_lora, key map from
comfy.lora.model_lora_keys_unet / model_lora_keys_clip on ComfyUI models built from our tiny
checkpoint), patch each weight with ComfyUI's adapter code (comfy.lora.calculate_weight ->
comfy.weight_adapter) and compare the output change to the one our trained model applies. Also
cross-checks tests/comfy_adapter_math.py (CI's stand-in for ComfyUI) on the same tensors.

  python bench/comfy_adapter_parity.py --comfyui /path/to/ComfyUI [--families sd15,sdxl,kolors]

ComfyUI is given as a checkout path (never fetched here) and run on the CPU; its environment needs
this project's requirements too (e.g. ComfyUI's venv with lycoris-lora installed).

ComfyUI's models: ComfyUI's checkpoint loader cannot recognise the tiny architectures (model
detection matches known full-size configs), so the bench does its steps by hand with ComfyUI's
code: comfy.model_detection.detect_unet_config on our tiny single-file checkpoint ->
comfy.supported_models.SD15/SDXL(config).get_model -> load_model_weights, and ComfyUI's CLIP
models (comfy.sd1_clip.SDClipModel with the tiny CLIP config) loaded through the model config's
process_clip_state_dict. Kolors (no single-file format here; ComfyUI runs it as an SDXL UNet via
Kolors-MZ) gets its UNet from our LDM conversion of the tiny diffusers UNet, UNet only."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

ALGOS = ["LoRA", "LoCon", "LyCORIS-LoCon", "LoHa", "LoKr", "LoKr-f4-both", "LoKr-f16-both", "LoKr-full", "DoRA", "OFT",
         "DoRA-output-axis"]
KOLORS_ALGOS = ["LoRA", "LoHa", "LoKr", "LoKr-full", "DoRA", "OFT", "DoRA-output-axis"]


def import_comfy(checkout: Path):
    if not (checkout / "comfy" / "lora.py").is_file():
        raise SystemExit(f"--comfyui {checkout}: no comfy/lora.py there; give a ComfyUI checkout.")
    sys.path.insert(0, str(checkout))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management picks a device
    import comfy.lora
    import comfy.lora_convert
    import comfy.model_detection
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.utils
    return comfy


class ComfyModels:
    """ComfyUI's UNet (and CLIP) models of one tiny family: their weights by ComfyUI key, and the
    LoRA key map ComfyUI's LoraLoader builds on them."""

    def __init__(self, comfy, family: str, folder: Path, work: Path):
        self.comfy = comfy
        if family == "kolors":
            sd = self._kolors_ldm(folder)
            model_class = comfy.supported_models.SDXL
        else:
            from trainer.tiny.build import write_tiny_checkpoint

            ckpt = write_tiny_checkpoint(family, work / f"{family}.safetensors")  # same seed as the folder
            sd = comfy.utils.load_torch_file(str(ckpt))
            model_class = comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL
        prefix = "model.diffusion_model."
        unet_config = comfy.model_detection.detect_unet_config(sd, prefix)
        config = model_class(unet_config)
        # the tiny UNet's 32/64 channels: full-size SDXL's 64-channel heads would leave no head at all
        config.unet_config.update(num_heads=-1, num_head_channels=8)
        self.model = config.get_model(sd, prefix)
        self.model.load_model_weights(sd, prefix)
        key_map = comfy.lora.model_lora_keys_unet(self.model, {})
        self.weights = dict(self.model.state_dict())
        self.clip = None
        if family != "kolors":
            self.clip = self._clip(family, config, sd, folder)
            key_map = comfy.lora.model_lora_keys_clip(self.clip, key_map)
            self.weights.update(self.clip.state_dict())
        self.key_map = key_map

    @staticmethod
    def _kolors_ldm(folder: Path) -> dict:
        from trainer.models.loader import load_model
        from trainer.models.ldm_write import unet_to_ldm

        unet = load_model(folder).unet
        sd = {}
        for key, value in unet.state_dict().items():
            try:
                (ldm,) = unet_to_ldm({key: None}, unet.config)
            except ValueError:  # encoder_hid_proj: Kolors-MZ keeps it outside ComfyUI's SDXL UNet
                continue
            sd["model.diffusion_model." + ldm] = value
        return sd

    def _clip(self, family, config, sd, folder):
        from transformers import CLIPTextConfig

        comfy = self.comfy
        holder = torch.nn.Module()
        parts = [("clip_l", "text_encoder", {})]
        if family == "sdxl":
            parts.append(("clip_g", "text_encoder_2", dict(layer="hidden", layer_idx=-2)))
        for name, folder_name, options in parts:
            hf = CLIPTextConfig.from_pretrained(folder / folder_name).to_dict()
            setattr(holder, name, comfy.sd1_clip.SDClipModel(textmodel_json_config=hf, model_options={"model_name": name},
                                                             **options))
        shapes = {k: v.shape for k, v in holder.state_dict().items()}
        # ComfyUI's CLIP has the real 49408-token vocabulary; the tiny one's embeddings are not adapted
        state = {k: v for k, v in config.process_clip_state_dict(dict(sd)).items() if shapes.get(k) == v.shape}
        missing, _ = holder.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.endswith(".weight") and "text_model.encoder.layers" in k]
        if missing:
            raise SystemExit(f"ComfyUI's CLIP did not get {len(missing)} encoder weights from the checkpoint, e.g. {missing[0]}")
        return holder

    def load(self, tensors: dict) -> tuple[dict, list[str]]:
        """comfy.lora.load_lora as LoraLoader calls it: (patches by ComfyUI key, keys not loaded)."""
        missed = []

        class Catch(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                if message.startswith("lora key not loaded: "):
                    missed.append(message[len("lora key not loaded: "):])

        handler = Catch()
        logging.getLogger().addHandler(handler)
        try:
            lora = self.comfy.lora_convert.convert_lora(dict(tensors))
            patches = self.comfy.lora.load_lora(lora, self.key_map)
        finally:
            logging.getLogger().removeHandler(handler)
        return patches, missed

    def patched(self, patches: dict, key: str) -> torch.Tensor:
        """ComfyUI's patched weight at strength 1, float32 as its patcher computes it."""
        weight = self.weights[key].detach().float().clone()
        return self.comfy.lora.calculate_weight([(1.0, patches[key], 1.0, None, None)], weight, key)


def run(comfy, family: str, algos: list[str], work: Path) -> list[str]:
    import comfy_adapter_math as cm
    from adapter_parity import measure, train_variant
    from trainer.demo import paint_dataset
    from trainer.tiny.build import write_tiny_model

    folder = write_tiny_model(family, work / f"tiny_{family}")
    data = paint_dataset(work / "data") if not (work / "data").exists() else work / "data"
    models = ComfyModels(comfy, family, folder, work)
    lines = []
    for algo in algos:
        started = time.time()
        result, path = train_variant(folder, data, work / "out", family, algo)
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        patches, missed = models.load(tensors)
        names = cm.module_names(tensors)
        unmapped = sorted(n for n in names if n not in models.key_map)
        reference_gap = [0.0]

        def theirs(name, _ours, tensors=tensors, patches=patches):
            key = models.key_map[name]
            base, patched = models.weights[key], models.patched(patches, key)
            reference_gap[0] = max(reference_gap[0], (cm.patched_weight(tensors, name, base) - patched).abs().max().item())
            return base, patched

        rows = measure(result.model, family, sorted(set(names) - set(unmapped)), theirs)
        worst = max(rows, key=lambda r: r.error)
        moved = sum(r.delta > 1e-3 for r in rows)
        verdict = "ok" if worst.error <= 1e-3 and not missed else ("DIFFERS (expected: ComfyUI normalises by the "
                                                                  "original weight)" if algo == "DoRA-output-axis" else "FAIL")
        lines.append(f"{algo:17s} {family:6s} modules={len(names):3d} patched={len(patches):3d} moved={moved:3d} "
                     f"not_loaded={len(missed)} unmapped={len(unmapped)} max_rel_err={worst.error:.2e} "
                     f"base_weight_gap={max(r.weight_gap for r in rows):.1e} "
                     f"reference_vs_comfy={reference_gap[0]:.1e} {verdict} ({time.time() - started:.0f}s)")
        if worst.error > 1e-3:
            lines[-1] += f"\n    worst module: {worst.name}"
        for key in missed[:3]:
            lines[-1] += f"\n    not loaded: {key}"
        print(lines[-1], flush=True)
    return lines


def synthetic_forms(comfy) -> str:
    """The reference against ComfyUI's adapters on random tensors in the forms training here does not
    write (Tucker cores, clamped OFT, DoRA on every adapter, no alpha): max |difference| of weights."""
    import comfy_adapter_math as cm

    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    conv, lin = r(8, 6, 3, 3), r(8, 6)
    forms = {
        "lora+mid": (conv, {"lora_up.weight": r(8, 2, 1, 1), "lora_down.weight": r(2, 6, 1, 1),
                            "lora_mid.weight": r(2, 2, 3, 3), "alpha": torch.tensor(1.0)}),
        "loha+tucker": (conv, {"hada_w1_a": r(2, 8), "hada_w1_b": r(2, 6), "hada_t1": r(2, 2, 3, 3),
                               "hada_w2_a": r(2, 8), "hada_w2_b": r(2, 6), "hada_t2": r(2, 2, 3, 3),
                               "alpha": torch.tensor(1.5)}),
        "lokr+t2": (conv, {"lokr_w1": r(2, 2), "lokr_w2_a": r(2, 4), "lokr_w2_b": r(2, 3), "lokr_t2": r(2, 2, 3, 3),
                           "alpha": torch.tensor(3.0)}),
        "lokr no alpha": (lin, {"lokr_w1_a": r(2, 1), "lokr_w1_b": r(1, 2), "lokr_w2": r(4, 3)}),
        "oft clamped": (lin, {"oft_blocks": r(2, 4, 4), "alpha": torch.tensor(0.05)}),
        "oft+rescale": (conv, {"oft_blocks": r(4, 2, 2), "rescale": r(8, 1, 1, 1)}),
        "lora+dora out": (lin, {"lora_up.weight": r(8, 2), "lora_down.weight": r(2, 6), "alpha": torch.tensor(1.0),
                                "dora_scale": r(8, 1).abs() + 1}),
        "loha+dora in": (conv, {"hada_w1_a": r(8, 2), "hada_w1_b": r(2, 54), "hada_w2_a": r(8, 2),
                                "hada_w2_b": r(2, 54), "dora_scale": r(1, 6, 1, 1).abs() + 1}),
        "lokr+dora out": (lin, {"lokr_w1": r(2, 2), "lokr_w2": r(4, 3), "dora_scale": r(8, 1).abs() + 1}),
        "oft+dora out": (lin, {"oft_blocks": r(2, 4, 4), "alpha": torch.tensor(0.5), "dora_scale": r(8, 1).abs() + 1}),
    }
    worst = {}
    for form, (weight, parts) in forms.items():
        tensors = {f"m.{k}": v for k, v in parts.items()}
        (adapter,) = comfy.lora.load_lora(tensors, {"m": "w"}).values()
        theirs = comfy.lora.calculate_weight([(1.0, adapter, 1.0, None, None)], weight.clone(), "w")
        try:
            worst[form] = f"{(cm.patched_weight(tensors, 'm', weight) - theirs).abs().max().item():.1e}"
        except RuntimeError as err:  # ComfyUI catches the same error, logs it and leaves the weight as is
            worst[form] = (f"reference raised ({str(err)[:40]}...); ComfyUI changed the weight by "
                           f"{(theirs - weight).abs().max().item():.1e}")
    return "reference vs ComfyUI on synthetic forms, max |weight diff|: " + ", ".join(
        f"{k} {v}" for k, v in worst.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (not fetched here)")
    parser.add_argument("--families", default="sd15,sdxl,kolors")
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--work", type=Path, help="where tiny models and files go (default: a temp folder)")
    args = parser.parse_args(argv)
    comfy = import_comfy(args.comfyui.resolve())
    logging.getLogger().setLevel(logging.WARNING)
    print(synthetic_forms(comfy), flush=True)
    wanted = args.algos.split(",")
    unknown = [a for a in wanted if a not in ALGOS]
    if unknown:
        raise SystemExit(f"--algos {unknown[0]}: use some of {', '.join(ALGOS)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        lines = []
        for family in args.families.split(","):
            algos = [a for a in wanted if family != "kolors" or a in KOLORS_ALGOS]
            lines += run(comfy, family, algos, work / family)
    print("\n".join(["", "summary (max_rel_err: of each module's output change; tolerance 1e-3):"] + lines))
    return 0 if all(" ok " in line or "DIFFERS" in line for line in lines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
