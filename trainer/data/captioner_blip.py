"""BLIP sentence captions (transformers BlipForConditionalGeneration) from a local model folder,
e.g. Salesforce/blip-image-captioning-base downloaded by the user into models/blip/<name>/."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrainerError

WHERE = ("Put a BLIP captioning model folder (config.json, model weights, (pre)processor_config.json and the "
         "tokenizer files, e.g. Salesforce/blip-image-captioning-base from Hugging Face) in {folder}.")


class BlipCaptioner:
    def __init__(self, folder, device="cpu"):
        folder = Path(folder)
        processor_files = ("preprocessor_config.json", "processor_config.json")
        if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in processor_files):
            raise TrainerError(f"BLIP model files missing in {folder}. " + WHERE.format(folder=folder))
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.processor = BlipProcessor.from_pretrained(str(folder), local_files_only=True)
        self.model = BlipForConditionalGeneration.from_pretrained(str(folder), local_files_only=True).to(device).eval()
        self.device = device

    def caption(self, images, max_new_tokens: int = 40, batch_size: int = 8, prefix: str = "") -> list[str]:
        """One sentence per image (greedy decoding, so the same image always gives the same caption)."""
        import torch

        out = []
        for start in range(0, len(images), batch_size):
            batch = [img.convert("RGB") for img in images[start:start + batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            out += [f"{prefix}{t.strip()}" for t in texts]
        return out
