"""Same caption, same conditioning? kohya sd-scripts' text encoding against ours, on tiny CLIPs.

    python bench/kohya_text_encoding.py --kohya /tmp/kohya --kohya-python /tmp/kohya-venv/bin/python \\
        --kohya-env PYTHONPATH=/tmp/kohya-shims [--out bench/out]

Builds tiny CLIP text encoders (12 layers, so kohya's SDXL ``hidden_states[11]`` exists) and
character-level CLIP tokenizers in the real file format (trainer/tiny/tokenizers.py: the SD/SDXL
first tokenizer pads with EOS, SDXL's second with "!"), saves them, and encodes the same captions
with kohya's strategies (strategy_sd / strategy_sdxl: tokenize, tokenize_with_weights,
encode_tokens[_with_weights], for max_token_length None / 150 / 225, with and without
weighted_captions, SD1.5 also with clip_skip 2) in kohya's venv, and with our families'
encode_text / sample_embeddings here. Prints shapes and the largest difference per case and
writes ``<out>/kohya_text_encoding.md``. A bench, not a test; it never fetches anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TAGS = ("1girl, solo, long hair, looking at viewer, blush, smile, open mouth, bangs, blue eyes, simple background, "
        "shirt, black hair, long sleeves, white background, dress, ribbon, holding, hair ribbon, closed mouth, "
        "standing, full body, flower, outdoors, sky, day, cloud, blue sky, tree, grass, red ribbon")
CAPTIONS = [
    TAGS,  # ~250 character tokens: three rows, cut at 225
    TAGS[:130],  # two rows
    "a photo of a cat",
    "",
    "(masterpiece:1.2), [lowres], ((red hair)), \\(not weighted\\), " + TAGS[:120],
]
SAMPLES = [("(masterpiece:1.3), 1girl, " + TAGS[:150], "lowres, (bad hands:1.4)"), ("a cat", "")]

KOHYA_SIDE = r'''
import json, sys
import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from library import strategy_sd, strategy_sdxl, lpw_stable_diffusion

d = sys.argv[1]
captions = json.load(open(d + "/captions.json"))
samples = json.load(open(d + "/samples.json"))
te1 = CLIPTextModel.from_pretrained(d + "/te1").eval()
te2 = CLIPTextModelWithProjection.from_pretrained(d + "/te2").eval()
out = {}
with torch.no_grad():
    for mtl in (None, 150, 225):
        tag = mtl or 75
        sd = strategy_sd.SdTokenizeStrategy(False, mtl, tokenizer_cache_dir=d + "/tok")
        for skip in (None, 2):
            enc = strategy_sd.SdTextEncodingStrategy(skip)
            out[f"sd15_{tag}_skip{skip or 1}"] = enc.encode_tokens(sd, [te1], sd.tokenize(captions))[0]
            ids, w = sd.tokenize_with_weights(captions)
            out[f"sd15_{tag}_skip{skip or 1}_weighted"] = enc.encode_tokens_with_weights(sd, [te1], ids, w)[0]
        xl = strategy_sdxl.SdxlTokenizeStrategy(mtl, tokenizer_cache_dir=d + "/tok")
        enc = strategy_sdxl.SdxlTextEncodingStrategy()
        h1, h2, pool = enc.encode_tokens(xl, [te1, te2], xl.tokenize(captions))
        out[f"sdxl_{tag}"], out[f"sdxl_{tag}_pooled"] = torch.cat([h1, h2], -1), pool
        ids, w = xl.tokenize_with_weights(captions)
        h1, h2, pool = enc.encode_tokens_with_weights(xl, [te1, te2], ids, w)
        out[f"sdxl_{tag}_weighted"], out[f"sdxl_{tag}_weighted_pooled"] = torch.cat([h1, h2], -1), pool

    class Pipe:  # what lpw_stable_diffusion.get_weighted_text_embeddings reads
        tokenizer, text_encoder, device = sd.tokenizer, te1, torch.device("cpu")

    for i, (prompt, negative) in enumerate(samples):
        for skip in (None, 2):
            cond, uncond = lpw_stable_diffusion.get_weighted_text_embeddings(
                Pipe, prompt, negative, max_embeddings_multiples=3, clip_skip=skip)
            out[f"sd15_sample{i}_skip{skip or 1}"] = torch.cat([cond, uncond])
save_file({k: v.contiguous() for k, v in out.items()}, d + "/kohya.safetensors")
print("kohya side:", len(out), "tensors")
'''


def build(folder: Path):
    """Tiny 12-layer CLIP-L / CLIP-G and the tokenizers, saved for kohya; returns (te1, te2, tok1, tok2)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from trainer.tiny import configs
    from trainer.tiny.tokenizers import clip_vocab_size, write_clip_tokenizer

    torch.manual_seed(0)
    vocab = clip_vocab_size()
    te1 = CLIPTextModel(CLIPTextConfig(**{**configs.clip_text(vocab), "num_hidden_layers": 12})).eval()
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**configs.clip_text(vocab, True),
                                                        "num_hidden_layers": 12})).eval()
    for name, model in (("te1", te1), ("te2", te2)):
        for module in model.modules():  # biased LayerNorms as in real CLIPs: the sample encoding's
            if isinstance(module, torch.nn.LayerNorm):  # mean restoring divides by a mean that is
                module.bias.data.normal_(0, 0.1)  # exactly 0 with zero biases (kohya: NaN)
        model.save_pretrained(str(folder / name))
        _prefix_text_model(folder / name / "model.safetensors")
    # kohya's tokenizer_cache_dir layout: <dir>/<hub id with / -> _>
    tok1 = write_clip_tokenizer(folder / "tok" / "openai_clip-vit-large-patch14")
    tok2 = write_clip_tokenizer(folder / "tok" / "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", pad_token="!")
    return te1, te2, CLIPTokenizer.from_pretrained(str(tok1)), CLIPTokenizer.from_pretrained(str(tok2))


def _prefix_text_model(path: Path) -> None:
    """transformers 5 writes CLIPTextModel's weights without the ``text_model.`` prefix that the
    transformers 4 in kohya's venv expects (it would silently start from random weights)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    fixed = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
             for k, v in tensors.items()}
    save_file(fixed, str(path), metadata={"format": "pt"})


def ours(te1, te2, tok1, tok2) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from trainer.families import get_family

    cpu = torch.device("cpu")
    sd15, sdxl = get_family("sd15"), get_family("sdxl")
    # the real pipelines (their encode_prompt is our 75-token path); no UNet/VAE needed to encode
    sd_pipe = StableDiffusionPipeline(vae=None, text_encoder=te1, tokenizer=tok1, unet=None, scheduler=None,
                                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    xl_pipe = StableDiffusionXLPipeline(vae=None, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                        tokenizer_2=tok2, unet=None, scheduler=None)
    out = {}
    with torch.no_grad():
        for mtl in (None, 150, 225):
            tag = mtl or 75
            for skip in (None, 1):  # diffusers' count: kohya's clip_skip 2
                for weighted in (False, True):
                    cond = sd15.encode_text(sd_pipe, CAPTIONS, cpu, skip, max_token_length=mtl, weighted=weighted)
                    out[f"sd15_{tag}_skip{(skip or 0) + 1}" + ("_weighted" if weighted else "")] = cond.context
            for weighted in (False, True):
                cond = sdxl.encode_text(xl_pipe, CAPTIONS, cpu, None, max_token_length=mtl, weighted=weighted)
                name = f"sdxl_{tag}" + ("_weighted" if weighted else "")
                out[name], out[name + "_pooled"] = cond.context, cond.pooled
        for i, (prompt, negative) in enumerate(SAMPLES):
            for skip in (None, 1):
                e = sd15.sample_embeddings(sd_pipe, prompt, negative, cpu, skip)
                out[f"sd15_sample{i}_skip{(skip or 0) + 1}"] = torch.cat([e["prompt_embeds"],
                                                                           e["negative_prompt_embeds"]])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kohya", default="/tmp/kohya")
    parser.add_argument("--kohya-python", default="/tmp/kohya-venv/bin/python")
    parser.add_argument("--kohya-env", action="append", default=[], help="NAME=value for kohya's process")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()

    import os

    import torch
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        te1, te2, tok1, tok2 = build(folder)
        (folder / "captions.json").write_text(json.dumps(CAPTIONS))
        (folder / "samples.json").write_text(json.dumps(SAMPLES))
        env = dict(os.environ)
        for pair in args.kohya_env:
            key, _, value = pair.partition("=")
            env[key] = value + (os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else "")
        env["PYTHONPATH"] = args.kohya + os.pathsep + env.get("PYTHONPATH", "")
        subprocess.run([args.kohya_python, "-c", KOHYA_SIDE, str(folder)], cwd=args.kohya, env=env, check=True)
        theirs = load_file(str(folder / "kohya.safetensors"))
        mine = ours(te1, te2, tok1, tok2)

    lines = ["# kohya text encoding vs ours (tiny 12-layer CLIPs, character-level tokenizers)", "",
             "| case | kohya shape | our shape | max abs diff |", "|---|---|---|---|"]
    worst = 0.0
    for name in sorted(theirs):
        a, b = theirs[name], mine.get(name)
        if b is None:
            lines.append(f"| {name} | {tuple(a.shape)} | missing | - |")
            worst = float("inf")
            continue
        # the sample encoding divides by a mean that a zero-bias tiny LayerNorm can make ~0: inf/NaN
        # must then sit where kohya's do, and the finite values agree
        same = tuple(a.shape) == tuple(b.shape) and torch.equal(a.isfinite(), b.isfinite())
        finite = a.isfinite() & b.isfinite() if same else None
        diff = float((a.float() - b.float())[finite].abs().max()) if same else float("inf")
        worst = max(worst, diff)
        nans = f" ({int((~a.isfinite()).sum())} inf/NaN in both)" if not a.isfinite().all() else ""
        lines.append(f"| {name} | {tuple(a.shape)} | {tuple(b.shape)} | {diff:.2e}{nans} |")
    lines += ["", f"largest difference: {worst:.2e}"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kohya_text_encoding.md").write_text(text, encoding="utf-8")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
