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


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """Write a character-level CLIP tokenizer (vocab.json, merges.txt, configs) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
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
