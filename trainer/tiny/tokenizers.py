"""Tokenizers for tiny models, made offline in milliseconds.

CLIP: a byte-level BPE vocabulary with no merges (every character is a token) — the same file
format as the real CLIP tokenizer (vocab.json + merges.txt), so the real loading code reads it.
ChatGLM: a sentencepiece BPE model trained on a small built-in corpus, saved as tokenizer.model.
"""

import json
from pathlib import Path



def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte-to-printable-character table (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

CORPUS = [
    "a photo of a red circle on a blue background",
    "a drawing of a green square, anime style, simple background",
    "portrait of a woman with black hair, smiling, outdoors",
    "a cat sitting on a wooden table, sunlight, high quality",
    "landscape, mountains, lake, sunset, detailed, masterpiece",
    "1girl, solo, long hair, looking at viewer, blue eyes",
    "ltdemo, a yellow star, white background, flat colors",
    "一只可爱的小猫, 高清, 摄影",
]


def _write_clip_vocab(folder: Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_comfyui_sd1_tokenizer(folder: Path) -> Path:
    """A tokenizer folder laid out like ComfyUI's comfy/sd1_tokenizer (the CLIP tokenizer ComfyUI uses
    for single-file SD1.5/SDXL checkpoints): its tokenizer_config.json says ``model_max_length: 8192``
    because ComfyUI chunks long prompts itself, while the CLIP text encoder takes 77 positions."""
    folder = _write_clip_vocab(folder)
    special = {"bos_token": _added_token("<|startoftext|>"), "eos_token": _added_token("<|endoftext|>"),
               "unk_token": _added_token("<|endoftext|>")}
    config = {"add_prefix_space": False, **special, "do_lower_case": True, "errors": "replace",
              "model_max_length": 8192, "name_or_path": "openai/clip-vit-large-patch14",
              "pad_token": "<|endoftext|>", "special_tokens_map_file": "./special_tokens_map.json",
              "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special_map = {**{k: {kk: vv for kk, vv in v.items() if kk != "__type"} for k, v in special.items()},
                   "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    return folder


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write a character-level CLIP tokenizer (vocab.json, merges.txt, configs) to ``folder``."""
    folder = _write_clip_vocab(folder)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


def clip_vocab_size() -> int:
    return 2 * len(bytes_to_unicode()) + 2


def write_chatglm_tokenizer(folder: Path, vocab_size: int = 64) -> Path:
    """Train a tiny sentencepiece BPE model and write it as ``tokenizer.model`` in ``folder``."""
    import io

    import sentencepiece as spm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=False,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "ChatGLMTokenizer",
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder
