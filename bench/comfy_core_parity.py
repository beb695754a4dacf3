"""The CI stand-in for ComfyUI's core (tests/comfy_core*.py) against a real ComfyUI's own code, on the
tiny single-file SD1.5 / SDXL checkpoints: unet_config (model_detection), BaseModel / CLIP / VAE
state-dict keys and their order, LoRA key maps (comfy.lora), tokens, CLIP conditioning, KSampler
latents (comfy.sample.sample, euler/normal and euler_ancestral/karras), sigma schedules, VAE decode /
encode, and the weights ComfyUI's loader + load_models_gpu patch in for a LoRA (+DoRA) at strength 0.7.

  python bench/comfy_core_parity.py --comfyui /path/to/ComfyUI

Run it with ComfyUI's Python (that environment needs this project's requirements too). ComfyUI
builds only full-size models, so the bench bends it to the tiny shapes the way the stand-in reads
them: GroupNorm group counts and CLIP vocabulary from the checkpoint's embedded diffusers configs,
SDXL's size embedder at the tiny width, the tiny head width, special token ids from the tiny tokenizer.
Prints one line per check; exits 1 when a check fails."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative to the compared tensor's largest value


def import_comfy(checkout: Path):
    if not (checkout / "comfy" / "sd.py").is_file():
        raise SystemExit(f"--comfyui {checkout}: no comfy/sd.py there; give a ComfyUI checkout.")
    sys.path.insert(0, str(checkout))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before model_management picks a device
    import comfy.clip_model
    import comfy.lora
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.utils
    return comfy


class Shapes:
    """Overrides that let ComfyUI's classes build the tiny models (set per model, then reset)."""

    def __init__(self, comfy):
        self.groups, self.vocab = 32, 49408
        shapes = self
        for cls in (comfy.ops.disable_weight_init.GroupNorm, comfy.ops.manual_cast.GroupNorm):
            def group_norm(module, num_groups=None, num_channels=None, *a, _init=cls.__init__, **k):
                _init(module, shapes.groups, num_channels, *a, **k)
            cls.__init__ = group_norm
        embeddings = comfy.clip_model.CLIPEmbeddings.__init__

        def clip_embeddings(module, embed_dim, vocab_size=49408, *a, **k):
            embeddings(module, embed_dim, shapes.vocab, *a, **k)
        comfy.clip_model.CLIPEmbeddings.__init__ = clip_embeddings


class Report:
    def __init__(self):
        self.failed = []

    def same(self, what, ok):
        print(f"  {what:44s} {'same' if ok else 'DIFFERENT'}", flush=True)
        if not ok:
            self.failed.append(what)

    def close(self, what, ours, theirs):
        gap = (ours.float() - theirs.float()).abs().max().item()
        scale = max(theirs.float().abs().max().item(), 1e-12)
        ok = gap <= TOLERANCE * scale
        print(f"  {what:44s} max|diff| {gap:.2e} of {scale:.2e} {'ok' if ok else 'FAIL'}", flush=True)
        if not ok:
            self.failed.append(what)


def check_family(comfy, shapes, cc, family, work, report):
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    from comfy_core_lora import model_lora_keys_clip, model_lora_keys_unet
    from comfy_standin import model_management as standin_mm
    from test_comfy_core_standin import LORA_TARGETS, kohya_lora

    print(family, flush=True)
    path = work / "models" / "checkpoints" / f"{family}.safetensors"
    with torch.inference_mode():
        model, clip, vae = cc.CheckpointLoaderSimple().load_checkpoint(path.name)
    sd = comfy.utils.load_torch_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        configs = json.loads(f.metadata()["lora_trainer.diffusers_configs"])

    ours_config = dict(model.model.model_config.unet_config)
    heads = {k: ours_config.pop(k) for k in ("num_heads", "num_head_channels")}
    ours_config.pop("dtype")
    unet_config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    report.same("unet_config (model_detection)", unet_config == ours_config)
    family_class = comfy.supported_models.SD15 if family == "sd15" else comfy.supported_models.SDXL
    config = family_class(unet_config)
    config.unet_config.update(heads)
    config.set_inference_dtype(torch.float32, None)
    shapes.groups = configs["unet"]["norm_num_groups"]
    with torch.inference_mode():
        base = config.get_model(sd, "model.diffusion_model.")
        if family == "sdxl":
            base.embedder = Timestep(configs["unet"]["addition_time_embed_dim"])
        base.load_model_weights(dict(sd), "model.diffusion_model.")
    shapes.groups = 32
    report.same("MODEL.model state-dict keys, in order", list(base.state_dict()) == list(model.model.state_dict()))
    ours = model.model.state_dict()
    report.same("MODEL.model values", all(torch.equal(v, ours[k]) for k, v in base.state_dict().items()))
    report.same("LoRA key map, UNet",
                comfy.lora.model_lora_keys_unet(base, {}) == model_lora_keys_unet(model.model, {}))
    patcher = comfy.model_patcher.ModelPatcher(base, torch.device("cpu"), torch.device("cpu"))

    shapes.vocab = configs["text_encoder"]["vocab_size"]
    options = {"clip_l_model_config": configs["text_encoder"]}
    with torch.inference_mode():
        if family == "sd15":
            text_model = comfy.sd1_clip.SD1ClipModel(dtype=torch.float16, model_options=options)
            tokenizer = comfy.sd1_clip.SD1Tokenizer()
        else:
            options["clip_g_model_config"] = configs["text_encoder_2"]
            text_model = comfy.sdxl_clip.SDXLClipModel(dtype=torch.float16, model_options=options)
            tokenizer = comfy.sdxl_clip.SDXLTokenizer()
        text_model.load_state_dict(config.process_clip_state_dict(dict(sd)), strict=False)
    shapes.vocab = 49408
    report.same("CLIP state-dict keys, in order",
                list(text_model.state_dict()) == list(clip.cond_stage_model.state_dict()))
    report.same("CLIP values and dtypes", all(
        v.dtype == clip.cond_stage_model.state_dict()[k].dtype and torch.equal(v, clip.cond_stage_model.state_dict()[k])
        for k, v in text_model.state_dict().items() if not k.startswith("clip_l.transformer.text_projection")))
    report.same("LoRA key map, CLIP",
                comfy.lora.model_lora_keys_clip(text_model, {}) == model_lora_keys_clip(clip.cond_stage_model, {}))
    for name in ("clip_l", "clip_g"):
        if hasattr(tokenizer, name):
            setattr(tokenizer, name, comfy.sd1_clip.SDTokenizer(str(cc.tokenizer_dir()), pad_with_end=name == "clip_l",
                                                                 embedding_key=name))
            getattr(text_model, name).special_tokens = {"start": tokenizer.clip_l.start_token,
                                                        "end": tokenizer.clip_l.end_token,
                                                        "pad": tokenizer.clip_l.end_token if name == "clip_l" else 0}
    prompt = "a yellow star on a white background"
    tokens = tokenizer.tokenize_with_weights(prompt)
    report.same("tokens", tokens == clip.tokenize(prompt))
    with torch.inference_mode():
        cond, pooled = text_model.encode_token_weights(tokens)
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize("blurry"))
        report.close("conditioning", positive[0][0], cond)
        report.close("pooled output", positive[0][1]["pooled_output"], pooled)
        for scheduler in ("normal", "karras"):
            report.close(f"sigmas {scheduler}",
                         cc.comfy_core_sampling.calculate_sigmas(model.model.model_sampling, scheduler, 7),
                         comfy.samplers.calculate_sigmas(base.model_sampling, scheduler, 7))
        latent = torch.zeros(1, 4, 8, 8)
        for sampler, scheduler in (("euler", "normal"), ("euler_ancestral", "karras")):
            noise = comfy.sample.prepare_noise(latent, 3)
            theirs = comfy.sample.sample(patcher, noise, 3, 5.0, sampler, scheduler, positive, negative, latent,
                                         seed=3, disable_pbar=True)
            ours = cc.KSampler().sample(model, 3, 3, 5.0, sampler, scheduler, positive, negative,
                                        {"samples": latent})[0]["samples"]
            report.close(f"KSampler {sampler}/{scheduler}", ours, theirs)

        weights = {**model.model.state_dict(), **clip.cond_stage_model.state_dict()}
        before = {k: v.clone() for k, v in base.state_dict().items()}
        lora = kohya_lora(LORA_TARGETS[family], weights, 0.2)
        name, key = LORA_TARGETS[family][0]
        lora[f"{name}.dora_scale"] = weights[key].float().flatten(1).norm(dim=1, keepdim=True) * 1.1
        key_map = comfy.lora.model_lora_keys_clip(text_model, comfy.lora.model_lora_keys_unet(base, {}))
        loaded = comfy.lora.load_lora(lora, key_map)
        their_model = patcher.clone()
        their_model.add_patches(loaded, 0.7)
        their_clip = comfy.model_patcher.ModelPatcher(text_model, torch.device("cpu"), torch.device("cpu")).clone()
        their_clip.add_patches(loaded, 0.7)
        comfy.model_management.load_models_gpu([their_model, their_clip])
        our_model, our_clip = cc.comfy_sd.load_lora_for_models(model, clip, lora, 0.7, 0.7)
        standin_mm.load_models_gpu([our_model, our_clip.patcher])
        for name, key in LORA_TARGETS[family]:
            holders = (base, model.model) if key.startswith("diffusion_model.") else (text_model, clip.cond_stage_model)
            report.close(f"patched {key[-40:]}", holders[1].state_dict()[key], holders[0].state_dict()[key])
        # both keep the shared module patched after loading the clone; loading the original undoes it
        comfy.model_management.load_models_gpu([patcher])
        standin_mm.load_models_gpu([model])
        report.same("original MODEL's weights back when it loads",
                    all(torch.equal(v, before[k]) and torch.equal(model.model.state_dict()[k], v)
                        for k, v in base.state_dict().items()))
        comfy.model_management.unload_all_models()
        standin_mm.unload_all_models()

    vae_sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    d = configs["vae"]
    shapes.groups = d["norm_num_groups"]
    with torch.inference_mode():
        their_vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"embed_dim": d["latent_channels"], "ddconfig": {
            "double_z": True, "z_channels": d["latent_channels"], "resolution": d["sample_size"], "in_channels": 3,
            "out_ch": 3, "ch": d["block_out_channels"][0],
            "ch_mult": [c // d["block_out_channels"][0] for c in d["block_out_channels"]],
            "num_res_blocks": d["layers_per_block"], "attn_resolutions": [], "dropout": 0.0}}})
        shapes.groups = 32
        report.same("VAE state-dict keys, in order",
                    list(their_vae.first_stage_model.state_dict()) == list(vae.first_stage_model.state_dict()))
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        report.close("VAE decode", vae.decode(latents), their_vae.decode(latents))
        pixels = torch.rand(1, 67, 70, 3, generator=torch.Generator().manual_seed(1))
        report.close("VAE encode (crop to 8)", vae.encode(pixels), their_vae.encode(pixels))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (not fetched here)")
    args = parser.parse_args(argv)
    comfy = import_comfy(args.comfyui.resolve())
    shapes = Shapes(comfy)
    sys.path[len(sys.path):] = [str(ROOT), str(ROOT / "tests")]
    sys.modules.setdefault("pytest", types.SimpleNamespace(  # test helpers are imported, not run
        fixture=lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f),
        mark=types.SimpleNamespace(parametrize=lambda *a, **k: (lambda f: f))))
    import comfy_core as cc
    from trainer.tiny.build import write_tiny_checkpoint

    logging.getLogger().setLevel(logging.ERROR)
    report = Report()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in ("sd15", "sdxl"):
            write_tiny_checkpoint(family, work / "models" / "checkpoints" / f"{family}.safetensors")
        os.environ["LT_MODELS_DIR"] = str(work / "models")
        for family in ("sd15", "sdxl"):
            check_family(comfy, shapes, cc, family, work, report)
    print("all checks agree" if not report.failed else f"{len(report.failed)} differ: {', '.join(report.failed)}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
