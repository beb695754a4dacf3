"""kohya's caption options with their effect: caption_prefix / caption_suffix,
caption_dropout_every_n_epochs, enable_wildcard, token_warmup_min / token_warmup_step,
secondary_separator (data/captions.py process_caption), and in a training run (what the text
encoder is given, step by step)."""

import random

import pytest

from tests.conftest import paint
from trainer.config import TrainConfig
from trainer.data.captions import process_caption, token_warmup_steps
from trainer.errors import TrainerError

TAGS = "1girl, solo, red hair, blue eyes, smile, outdoors"


def test_prefix_and_suffix_join_with_a_space_as_kohya_and_shuffle_with_the_tags():
    rng = random.Random(0)
    assert process_caption("1girl, solo", rng, caption_prefix="ltchar,", caption_suffix=", best") == \
        "ltchar, 1girl, solo , best"  # kohya: prefix + " " + caption + " " + suffix
    # the prefix is a tag like the others: keep_tokens=1 keeps it first while the rest shuffle
    outs = {process_caption(TAGS, rng, shuffle_caption=True, keep_tokens=1, caption_prefix="ltchar,")
            for _ in range(30)}
    assert all(out.startswith("ltchar, ") for out in outs) and len(outs) > 5
    # without keep_tokens it moves too
    firsts = {process_caption(TAGS, rng, shuffle_caption=True, caption_prefix="ltchar,").split(", ")[0]
              for _ in range(40)}
    assert len(firsts) > 2


def test_caption_dropout_every_n_epochs_empties_every_nth_epoch_counted_from_one():
    rng = random.Random(0)
    got = [process_caption(TAGS, rng, caption_dropout_every_n_epochs=2, epoch=epoch) for epoch in range(1, 6)]
    assert got == [TAGS, "", TAGS, "", TAGS]
    # the prefix goes too: the whole caption is empty
    assert process_caption(TAGS, rng, caption_prefix="x", caption_dropout_every_n_epochs=1, epoch=3) == ""


def test_wildcards_pick_one_alternative_and_one_line_each_time():
    rng = random.Random(0)
    outs = {process_caption("{red|blue|green} hair, {{not a wildcard}}", rng, enable_wildcard=True)
            for _ in range(60)}
    assert outs == {f"{c} hair, {{not a wildcard}}" for c in ("red", "blue", "green")}
    lines = "a photo of ltchar\n\nltchar, 1girl, smile\n"
    outs = {process_caption(lines, rng, enable_wildcard=True, caption_prefix="p") for _ in range(40)}
    assert outs == {"p a photo of ltchar", "p ltchar, 1girl, smile"}  # empty lines never drawn
    # without enable_wildcard: the first line, braces as written
    assert process_caption("{red|blue} hair\nsecond", rng) == "{red|blue} hair"


def test_token_warmup_grows_the_tags_from_min_to_all_by_the_step():
    rng = random.Random(0)
    counts = [len(process_caption(TAGS, rng, keep_tokens=1, token_warmup_min=1, token_warmup_step=10,
                                  step=step).split(", ")) for step in range(0, 13)]
    # 1 kept tag + floor(step x (5 - 1) / 10) + 1 of the 5 others, all of them from step 10
    assert counts == [2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6]
    # the kept tag is always there, the warmed-up ones are the caption's first ones (cut before shuffling)
    early = process_caption(TAGS, rng, keep_tokens=1, token_warmup_step=10, step=3)
    assert early == "1girl, solo, red hair"
    # below 1 it is a share of the run, floored (kohya)
    assert token_warmup_steps(0.5, 21) == 10 and token_warmup_steps(40, 21) == 40 and token_warmup_steps(0, 9) == 0


def test_secondary_separator_keeps_tags_together_and_becomes_the_separator():
    rng = random.Random(0)
    caption = "1girl;;;solo, red hair;;;blue eyes, smile, outdoors"
    for _ in range(20):
        out = process_caption(caption, rng, shuffle_caption=True, secondary_separator=";;;")
        assert ";;;" not in out and "red hair,blue eyes" in out and "1girl,solo" in out
    assert process_caption(caption, rng, secondary_separator=";;;") == "1girl,solo, red hair,blue eyes, smile, outdoors"


def test_cache_refuses_token_warmup_and_release_refuses_wildcards():
    with pytest.raises(TrainerError, match="token warmup"):
        TrainConfig(cache_text_encoder_outputs=True, token_warmup_step=10).validate()
    with pytest.raises(TrainerError, match="enable_wildcard"):
        TrainConfig(cache_text_encoder_outputs=True, release_text_encoder=True, enable_wildcard=True).validate()


def _dataset(root, captions):
    folder = root / "1_ltchar"
    for i, caption in enumerate(captions):
        paint(folder / f"{i}.png", colour=(40 * i, 0, 0))
        (folder / f"{i}.txt").write_text(caption, encoding="utf-8")
    return root


def _seen_captions(monkeypatch):
    """What the text encoder is asked to encode, batch by batch (the run's TextSource)."""
    from trainer.train.sources import TextSource

    seen, real = [], TextSource.batch

    def spy(self, captions, device):
        seen.append(list(captions))
        return real(self, captions, device)

    monkeypatch.setattr(TextSource, "batch", spy)
    return seen


def test_a_run_applies_prefix_suffix_dropout_epochs_and_token_warmup(tiny_models, tmp_path, monkeypatch):
    from trainer.train.loop import train

    data = _dataset(tmp_path / "data", ["solo, red hair, smile, outdoors, day"])
    seen = _seen_captions(monkeypatch)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(data),
                         resolution="64", network_dim=4, network_alpha=4, max_train_epochs=4, train_batch_size=1,
                         output_dir=str(tmp_path / "out"), output_name="cap", caption_prefix="ltchar,",
                         caption_suffix="", keep_tokens=1, caption_dropout_every_n_epochs=3,
                         token_warmup_min=1, token_warmup_step=0.5)  # half of the 4 steps: 2
    result = train(config)
    assert result.steps == 4
    # step 0: 1 kept tag + 1; step 1: 1 + floor(1 x (5 - 1) / 2) + 1 = 1 + 3; from step 2 all of them;
    # epoch 3 (step 2) trains with an empty caption
    assert seen == [["ltchar, solo"], ["ltchar, solo, red hair, smile"], [""],
                    ["ltchar, solo, red hair, smile, outdoors, day"]]


def test_a_run_draws_wildcards_and_joins_secondary_separators(tiny_models, tmp_path, monkeypatch):
    from trainer.train.loop import train

    data = _dataset(tmp_path / "data", ["ltchar, {red|blue} hair, smile;;;teeth"])
    seen = _seen_captions(monkeypatch)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(data),
                         resolution="64", network_dim=4, network_alpha=4, max_train_steps=6, max_train_epochs=6,
                         train_batch_size=1, output_dir=str(tmp_path / "out"), output_name="wild",
                         enable_wildcard=True, secondary_separator=";;;")
    train(config)
    assert {c for (c,) in seen} == {"ltchar, red hair, smile,teeth", "ltchar, blue hair, smile,teeth"}
