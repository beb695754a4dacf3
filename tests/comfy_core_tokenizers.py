"""ComfyUI a125cd84's CLIP tokenizers for SD1.5 / SDXL (sd1_clip.SDTokenizer, SD1Tokenizer,
sdxl_clip.SDXLTokenizer) in our own small code: transformers' CLIPTokenizer from ComfyUI's
sd1_tokenizer folder layout, start/end/padding as ComfyUI adds them. Prompts are taken literally (no
``(word:1.2)`` weights or embeddings: the stand-in raises on them)."""

from __future__ import annotations


class SDTokenizer:
    """sd1_clip.SDTokenizer: start + up to 75 tokens + end, padded to 77, per chunk."""

    def __init__(self, tokenizer_path, pad_with_end=True, embedding_key="clip_l", max_length=77):
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_path))
        self.max_length = max_length
        empty = self.tokenizer("")["input_ids"]
        self.start_token, self.end_token = empty[0], empty[1]
        self.pad_token = self.end_token if pad_with_end else 0
        self.pad_with_end = pad_with_end
        self.embedding_key = embedding_key

    def tokenize_with_weights(self, text: str, return_word_ids=False, **kwargs):
        if any(c in text for c in "()") or "embedding:" in text:
            raise NotImplementedError("the stand-in tokenizer takes prompts literally: no (weights) or embeddings")
        ids = self.tokenizer(text)["input_ids"][1:-1]
        room = self.max_length - 2
        batches = []
        for start in range(0, max(len(ids), 1), room):
            chunk = [(t, 1.0, 1) for t in ids[start:start + room]]
            batch = [(self.start_token, 1.0, 0)] + chunk + [(self.end_token, 1.0, 0)]
            batches.append(batch + [(self.pad_token, 1.0, 0)] * (self.max_length - len(batch)))
        if not return_word_ids:
            batches = [[(t, w) for t, w, _ in batch] for batch in batches]
        return batches

    def state_dict(self):
        return {}


class SD1Tokenizer:
    def __init__(self, tokenizer_path):
        self.clip_name, self.clip = "l", "clip_l"
        self.clip_l = SDTokenizer(tokenizer_path)

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        return {"l": self.clip_l.tokenize_with_weights(text, return_word_ids, **kwargs)}

    def state_dict(self):
        return {}


class SDXLTokenizer:
    def __init__(self, tokenizer_path):
        self.clip_l = SDTokenizer(tokenizer_path)
        self.clip_g = SDTokenizer(tokenizer_path, pad_with_end=False, embedding_key="clip_g")

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        return {"g": self.clip_g.tokenize_with_weights(text, return_word_ids, **kwargs),
                "l": self.clip_l.tokenize_with_weights(text, return_word_ids, **kwargs)}

    def state_dict(self):
        return {}
