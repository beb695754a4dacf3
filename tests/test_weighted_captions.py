"""kohya's weighted_captions: "(word:1.2)", "(word)", "[word]" and escapes, read as kohya reads
them, scale the hidden states of those words' tokens (kohya's encode_tokens_with_weights; the
same values as kohya's own code bit for bit in bench/kohya_text_encoding.py). Kolors' ChatGLM
takes no weights: the marks are removed. SD1.5 sample prompts always read weights and restore the
mean (kohya's long-prompt pipeline).

The tiny tokenizer is character level: "a" is one token, "hello" five, "cat" three.
"""

import pytest
import torch

from trainer.config import TrainConfig
from trainer.data.prompt_weights import parse_weights, plain_text
from trainer.errors import TrainerError
from trainer.models.loader import load_model

CPU = torch.device("cpu")


def test_the_syntax_reads_as_kohya_documents_it():
    # the examples of kohya's parse_prompt_attention docstring (A1111's syntax)
    assert parse_weights("normal text") == [("normal text", 1.0)]
    assert parse_weights("an (important) word") == [("an ", 1.0), ("important", 1.1), (" word", 1.0)]
    assert parse_weights("(unbalanced") == [("unbalanced", 1.1)]
    assert parse_weights("\\(literal\\]") == [("(literal]", 1.0)]
    assert parse_weights("(unnecessary)(parens)") == [("unnecessaryparens", 1.1)]
    got = parse_weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    expected = [("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
                (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])
    # a stray closer and a weight outside brackets are text; a lone backslash vanishes
    assert parse_weights("a) b] c:1.2) d\\e") == [("a) b] c:1.2) de", 1.0)]
    assert parse_weights("") == [("", 1.0)]
    assert plain_text("(red hair:1.3), [blue eyes], \\(x\\)") == "red hair, blue eyes, (x)"
    with pytest.raises(TrainerError, match="not a number"):
        parse_weights("(red:1.2.3)")


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def model(request, tiny_models):
    return load_model(tiny_models(request.param))


def encode(model, text, weighted, **options):
    with torch.no_grad():
        return model.family.encode_text(model.pipe, [text], CPU, weighted=weighted, **options)


def test_weights_scale_the_words_states_and_nothing_else(model):
    plain = encode(model, "a hello cat", False)
    for text, factor in (("a (hello:1.5) cat", 1.5), ("a [hello] cat", 1 / 1.1), ("a ((hello)) cat", 1.21)):
        weighted = encode(model, text, True)
        # BOS, "a": 1.0; "hello" (positions 2-6): x factor; "cat", EOS and padding: 1.0
        torch.testing.assert_close(weighted.context[:, 2:7], plain.context[:, 2:7] * factor)
        torch.testing.assert_close(weighted.context[:, :2], plain.context[:, :2])
        torch.testing.assert_close(weighted.context[:, 7:], plain.context[:, 7:])
        if model.family.name == "sdxl":  # kohya weights the hidden states only, not the pooled output
            torch.testing.assert_close(weighted.pooled, plain.pooled)
    # escaped brackets are the characters themselves, at weight 1
    torch.testing.assert_close(encode(model, "a \\(hello\\) cat", True).context,
                               encode(model, "a (hello) cat", False).context)


def test_weights_land_on_their_tokens_in_the_second_row(model):
    first_row = " ".join(["hello"] * 15)  # 75 tokens
    plain = encode(model, f"{first_row} a cat", False, max_token_length=150)
    weighted = encode(model, f"{first_row} a (cat:2)", True, max_token_length=150)
    # row 2 starts at position 76: "a" (76), "cat" (77-79)
    torch.testing.assert_close(weighted.context[:, 77:80], plain.context[:, 77:80] * 2)
    torch.testing.assert_close(weighted.context[:, :77], plain.context[:, :77])
    torch.testing.assert_close(weighted.context[:, 80:], plain.context[:, 80:])


def test_kolors_removes_the_marks(tiny_models):
    kolors = load_model(tiny_models("kolors"))
    torch.testing.assert_close(encode(kolors, "a (red:1.5) [star]", True).context,
                               encode(kolors, "a red star", False).context)


def test_a_run_caches_and_trains_on_the_weighted_conditioning(tiny_models, tmp_path):
    from tests.conftest import paint
    from trainer.train.loop import train
    from trainer.train.sources import TextSource

    caption = "ltchar, (red hair:1.4), smile"
    folder = tmp_path / "data" / "1_ltchar"
    paint(folder / "0.png")
    (folder / "0.txt").write_text(caption, encoding="utf-8")
    model = load_model(tiny_models("sd15"))
    weighted = encode(model, caption, True).context
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(tmp_path / "data"),
                         resolution="64", network_dim=4, network_alpha=4, max_train_steps=1, max_train_epochs=1,
                         output_dir=str(tmp_path / "out"), output_name="w", weighted_captions=True,
                         cache_text_encoder_outputs=True, cache_text_encoder_outputs_to_disk=True,
                         cache_dir=str(tmp_path / "cache"))
    train(config, model=model)
    # the cache file holds the weighted states, under a key of its own (the unweighted cache differs)
    source = TextSource(model, None, cache=True, cache_dir=tmp_path / "cache", options={"weighted": True})
    torch.testing.assert_close(source.batch([caption], CPU).context, weighted)
    assert source.encoder_calls == 0
    assert not TextSource(model, None, cache=True, cache_dir=tmp_path / "cache")._disk_path(caption).is_file()


def test_sd15_sample_prompts_read_weights_and_keep_the_mean(tiny_models):
    sd15 = load_model(tiny_models("sd15"))
    for module in sd15.pipe.text_encoder.modules():  # a biased last LayerNorm, as real CLIPs have
        if isinstance(module, torch.nn.LayerNorm):
            module.bias.data.fill_(0.1)
    with torch.no_grad():
        plain = sd15.family.sample_embeddings(sd15.pipe, "a hello cat", "", CPU)["prompt_embeds"]
        weighted = sd15.family.sample_embeddings(sd15.pipe, "a (hello:1.5) cat", "", CPU)["prompt_embeds"]
    assert not torch.allclose(weighted, plain)
    ratio = weighted[:, 2:7] / plain[:, 2:7]  # "hello" scaled by 1.5, then everything by one factor
    rest = weighted[:, 7:] / plain[:, 7:]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(rest.mean()) * 1.5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(weighted.mean(), plain.mean(), atol=1e-5, rtol=1e-4)
