"""BLIP captions from a tiny BLIP model built and saved here, loaded back offline."""

import pytest
from PIL import Image

from trainer.data.captioner_blip import BlipCaptioner
from trainer.errors import TrainerError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog", "photo", "of", "red", "star", "the"]


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(VOCAB))
    text = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, bos_token_id=2, sep_token_id=3, pad_token_id=0, eos_token_id=3)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  image_size=32, patch_size=8)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(folder)
    return folder


def test_captions_are_sentences_from_the_vocab_and_repeatable(blip_folder):
    captioner = BlipCaptioner(blip_folder)
    images = [Image.new("RGB", (50, 40), (255, 0, 0)), Image.new("RGB", (30, 60), (0, 0, 255))]
    first = captioner.caption(images, max_new_tokens=6, prefix="ltdemo, ")
    assert len(first) == 2 and all(c.startswith("ltdemo, ") for c in first)
    assert all(set(c.removeprefix("ltdemo, ").split()) <= set(VOCAB[5:]) for c in first)
    assert captioner.caption(images, max_new_tokens=6, prefix="ltdemo, ") == first
    assert captioner.caption(images[:1], max_new_tokens=6, batch_size=1, prefix="ltdemo, ") == first[:1]


def test_missing_model_says_what_to_put_where(tmp_path):
    with pytest.raises(TrainerError, match="blip-image-captioning-base"):
        BlipCaptioner(tmp_path)
