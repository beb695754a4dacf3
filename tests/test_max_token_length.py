"""kohya's max_token_length (75 / 150 / 225) on SD1.5 and SDXL: chunked CLIP encoding.

kohya (strategy_base._get_input_ids + strategy_sd / strategy_sdxl encode_tokens) cuts a caption
into rows of BOS + 75 tokens + EOS, encodes each row on its own and joins the states back as
BOS, 75 states per row, the last row's last state: [B, 152, dim] for 150 and [B, 227, dim] for
225 ([B, 77, dim] by default); SDXL's pooled output is the first row's. bench/kohya_text_encoding.py
runs kohya's own code on the same tiny CLIPs and finds these shapes and values bit for bit;
here the layout is checked against the plain 77-token encoding of each row's text.

The tiny tokenizer is character level: every character of a word is one token.
"""

import pytest
import torch

from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.families.clip_chunks import chunk_count
from trainer.models.loader import load_model

CPU = torch.device("cpu")
ROW_A = " ".join(["hello"] * 15)  # exactly 75 tokens: the first row
ROW_B = "a photo of a cat"  # 12 tokens


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def model(request, tiny_models):
    return load_model(tiny_models(request.param))


def encode(model, text, **options):
    with torch.no_grad():
        return model.family.encode_text(model.pipe, [text], CPU, **options)


def test_the_conditioning_is_75_tokens_per_row_plus_bos_and_eos(model):
    dim = 32 if model.family.name == "sd15" else 64
    caption = f"{ROW_A} {ROW_A} {ROW_A} {ROW_B}"  # 237 tokens: cut at 225
    for length, tokens in ((None, 77), (75, 77), (150, 152), (225, 227)):
        cond = encode(model, caption, max_token_length=length)
        assert cond.context.shape == (1, tokens, dim)
        if model.family.name == "sdxl":
            assert cond.pooled.shape == (1, 32)


def test_each_row_is_encoded_on_its_own_and_joined_as_kohya(model):
    long = encode(model, f"{ROW_A} {ROW_B}", max_token_length=225)
    first, second, empty = encode(model, ROW_A), encode(model, ROW_B), encode(model, "")
    ctx = long.context
    # BOS + the first 75 tokens: the 77-token encoding of that text (without its EOS)
    torch.testing.assert_close(ctx[:, :76], first.context[:, :76], atol=1e-5, rtol=1e-5)
    # the second row's 75 positions: the rest of the caption encoded alone (then its EOS and padding)
    torch.testing.assert_close(ctx[:, 76:151], second.context[:, 1:76], atol=1e-5, rtol=1e-5)
    # the third row holds no text: an empty caption's states, its last state closing the sequence
    torch.testing.assert_close(ctx[:, 151:227], empty.context[:, 1:77], atol=1e-5, rtol=1e-5)
    # 150 tokens: the same first two rows, closed by the second row's last state
    mid = encode(model, f"{ROW_A} {ROW_B}", max_token_length=150).context
    torch.testing.assert_close(mid[:, :151], ctx[:, :151])
    torch.testing.assert_close(mid[:, 151], second.context[:, 76], atol=1e-5, rtol=1e-5)
    if model.family.name == "sdxl":  # pooled: CLIP-G's first row, as kohya (pool2[::n])
        torch.testing.assert_close(long.pooled, first.pooled, atol=1e-5, rtol=1e-5)


def test_other_lengths_read_as_kohya_encodes_them_with_a_note():
    # kohya does not check a TOML's max_token_length: it encodes max_token_length // 75 rows
    for bad, read_as in ((100, None), (128, None), (160, 150), (300, 225)):
        with pytest.warns(UserWarning, match="not 75, 150 or 225"):
            assert TrainConfig(max_token_length=bad).validate().max_token_length == read_as
    for bad in (100, 300, 76):  # the encoder itself only takes kohya's lengths
        with pytest.raises(TrainerError, match="75 .*150 or 225"):
            chunk_count(bad)
    TrainConfig(max_token_length=150).validate()
    assert [chunk_count(v) for v in (None, 75, 150, 225)] == [1, 1, 2, 3]


def test_kolors_ignores_it_with_a_note():
    from trainer.families import get_family
    from trainer.train.caption_options import text_options

    notes = []
    assert text_options(TrainConfig(max_token_length=225), get_family("kolors"), notes.append) == {}
    assert len(notes) == 1 and "ChatGLM" in notes[0] and "256" in notes[0]
    assert text_options(TrainConfig(max_token_length=225), get_family("sdxl"), notes.append) == \
        {"max_token_length": 225}
    assert text_options(TrainConfig(max_token_length=75), get_family("sdxl"), notes.append) == {}


def test_the_text_cache_is_kept_per_length(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from trainer.train.sources import TextSource

    sd15 = load_model(tiny_models("sd15"))
    caption = f"{ROW_A} {ROW_B}"
    long = TextSource(sd15, None, cache=True, cache_dir=tmp_path, options={"max_token_length": 150})
    long.prepare([caption], CPU, log=lambda line: None)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and load_file(str(files[0]))["context"].shape == (152, 32)
    plain = TextSource(sd15, None, cache=True, cache_dir=tmp_path)
    plain.prepare([caption], CPU, log=lambda line: None)
    assert plain.encoder_calls == 1 and len(list(tmp_path.glob("*.safetensors"))) == 2  # not the 152 one
    again = TextSource(sd15, None, cache=True, cache_dir=tmp_path, options={"max_token_length": 150})
    again.prepare([caption], CPU, log=lambda line: None)
    assert again.encoder_calls == 0 and again.batch([caption], CPU).context.shape == (1, 152, 32)


def test_a_run_trains_on_152_tokens_and_samples_long_prompts_as_kohya(tiny_models, tmp_path):
    """The UNet sees the caption's 152 positions; SD1.5 samples go through kohya's long-prompt
    encoding (rows of 77 kept whole, as many as the prompt needs up to 3)."""
    from PIL import Image

    from tests.conftest import paint
    from trainer.train.loop import train

    folder = tmp_path / "data" / "1_hello"
    paint(folder / "0.png")
    (folder / "0.txt").write_text(f"{ROW_A}, {ROW_B}", encoding="utf-8")
    model = load_model(tiny_models("sd15"))
    seen = []
    hook = model.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["encoder_hidden_states"].shape)), with_kwargs=True)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(tmp_path / "data"),
                         resolution="64", network_dim=4, network_alpha=4, max_train_steps=1, max_train_epochs=1,
                         output_dir=str(tmp_path / "out"), output_name="long", max_token_length=150,
                         sample_prompts=[f"{ROW_A} {ROW_B} --n blurry --d 1 --s 1 --w 64 --h 64 --l 2"],
                         sample_every_n_steps=1)
    result = train(config, model=model)
    hook.remove()
    assert seen[0] == (1, 152, 32)  # the training step
    assert (2, 154, 32) in seen  # the sample: negative + prompt, 2 rows of 77 each (kohya's pipeline)
    assert Image.open(result.files["sample_00_s000001"]).size == (64, 64)


def test_sdxl_samples_use_the_training_layout(tiny_models):
    """kohya's SDXL sample pipeline encodes with the training strategy: max_token_length rows."""
    from trainer.sample_prompts import kohya_prompt_options

    assert kohya_prompt_options(TrainConfig(max_token_length=150, clip_skip=2)) == \
        {"clip_skip": 1, "max_token_length": 150}
    sdxl = load_model(tiny_models("sdxl"))
    with torch.no_grad():
        e = sdxl.family.sample_embeddings(sdxl.pipe, f"{ROW_A} {ROW_B}", "", CPU, max_token_length=150)
    assert e["prompt_embeds"].shape == e["negative_prompt_embeds"].shape == (1, 152, 64)
    assert e["pooled_prompt_embeds"].shape == (1, 32)
    # the negative "" is encoded (kohya), not zeros
    assert e["negative_prompt_embeds"].abs().sum() > 0
