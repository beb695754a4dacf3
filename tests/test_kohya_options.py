"""Every option of kohya's train_network / sdxl_train_network has an answer: implemented,
an alias, a note, or a refusal saying what to use instead. Never "unknown"."""

import json
import warnings

import pytest

from conftest import ROOT
from trainer.config import TrainConfig
from trainer.config_files import config_from_file
from trainer.errors import TrainerError
from trainer.kohya_options import ANSWERS, Alias, Note, Refusal, answer, translate
from trainer.sample_prompts import parse_prompt_line

FROZEN = json.loads((ROOT / "tests/data/kohya_options.json").read_text())
KOHYA_NAMES = sorted(set(FROZEN["train_network"]) | set(FROZEN["sdxl_train_network"]))
FIELDS = set(TrainConfig.field_names())


def load(values: dict, **kwargs):
    """TrainConfig.from_dict, with the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = TrainConfig.from_dict(values, **kwargs)
    return config, [str(w.message) for w in caught]


def set_value(name: str):
    """A value other than kohya's default for a noted / refused option."""
    default = FROZEN["defaults"].get(name)
    if isinstance(default, bool):
        return True
    if default is None:
        return 7
    if isinstance(default, (int, float)):
        return default + 3
    return default + "_other"


def test_every_kohya_option_has_an_answer():
    assert len(KOHYA_NAMES) == 196
    missing = [name for name in KOHYA_NAMES if answer(name, FIELDS) is None]
    assert missing == []
    # the registry speaks only for kohya's names, and never for one we implement under its name
    assert set(ANSWERS) <= set(KOHYA_NAMES)
    assert not set(ANSWERS) & FIELDS


def test_no_kohya_option_is_unknown_and_each_note_speaks_once():
    notes = [n for n in KOHYA_NAMES if isinstance(ANSWERS.get(n), Note)]
    values = {name: set_value(name) for name in notes}
    _, messages = load(values, source="all notes")
    assert not [m for m in messages if "unknown setting" in m]
    for name in notes:
        said = [m for m in messages if m.startswith(f"note: {name} = ")]
        assert len(said) == 1, (name, said)
        assert len(said[0].splitlines()) == 1


@pytest.mark.parametrize("name", sorted(n for n, a in ANSWERS.items() if isinstance(a, Refusal)))
def test_refusals_say_what_to_use_instead_only_when_set(name):
    with pytest.raises(TrainerError) as err:
        TrainConfig.from_dict({name: set_value(name)}, source="run.toml")
    message = str(err.value)
    assert message.startswith(f"run.toml: {name} = ") and len(message.splitlines()) == 1
    assert any(word in message for word in ("use", "remove", "set", "merge", "turn"))
    _, messages = load({name: FROZEN["defaults"].get(name)})  # a GUI export's default: quiet
    assert messages == []


def test_a_gui_export_with_every_option_at_kohyas_default_is_quiet():
    values = {name: FROZEN["defaults"].get(name) for name in ANSWERS}
    values.update({name: "" for name, a in ANSWERS.items() if FROZEN["defaults"].get(name) is None
                   and not isinstance(a, Alias)})  # GUI exports write "" for "not set"
    _, messages = load(values)
    assert messages == []


def test_aliases_have_kohyas_meaning():
    config, _ = load({"caption_extension": ".caption", "caption_extention": ".txt2"})
    assert config.caption_extension == ".txt2"  # kohya: the old spelling wins
    assert load({"use_8bit_adam": True})[0].optimizer_type == "AdamW8bit"
    assert load({"use_lion_optimizer": True})[0].optimizer_type == "Lion"
    assert load({"use_8bit_adam": False})[0].optimizer_type == TrainConfig.optimizer_type
    with pytest.raises(TrainerError, match="both use_8bit_adam and optimizer_type"):
        TrainConfig.from_dict({"use_8bit_adam": True, "optimizer_type": "Lion"})
    # kohya's networks.lora takes the first of a text_encoder_lr list (GUI exports write [te, te])
    assert load({"text_encoder_lr": [2e-5, 3e-5]})[0].text_encoder_lr == 2e-5
    assert load({"network_args": "conv_dim=4 conv_alpha=2"})[0].network_args == ["conv_dim=4", "conv_alpha=2"]
    assert load({"resume": False})[0].resume == ""


def test_other_unknown_names_keep_the_did_you_mean_warning():
    config, messages = load({"netwrok_dim": 4, "network_dim": 8})
    assert config.network_dim == 8
    assert messages == ["config: unknown setting 'netwrok_dim' (did you mean 'network_dim'?)"]
    assert translate({"zzz": 1}, FIELDS) == {"zzz": 1}  # left for that warning


def test_a_file_with_epochs_and_steps_trains_the_epochs_as_kohya(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[training_arguments]\nmax_train_epochs = 3\nmax_train_steps = 10000\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = config_from_file(path)
    assert (config.max_train_epochs, config.max_train_steps) == (3, 0)
    assert any("max_train_epochs = 3 wins over max_train_steps" in str(w.message) for w in caught)
    later = TrainConfig.from_dict({**config.to_dict(), "max_train_steps": 2})  # --set afterwards still wins
    assert later.max_train_steps == 2


# -- sample_prompts: kohya's prompt file ---------------------------------------------------------

def test_sample_prompts_txt_file_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "prompts.txt").write_text(
        "# a comment\nltdemo, a star --n blurry --w 64 --h 96 --d 5 --s 3 --l 6.5 --ss k_euler\n\nsecond prompt\n")
    config = tmp_path / "cfg" / "run.toml"
    config.write_text('sample_prompts = "prompts.txt"\n')
    monkeypatch.chdir(tmp_path)  # not the config's folder: the file is found beside the config
    prompts = config_from_file(config).sample_prompts
    assert len(prompts) == 2
    first = parse_prompt_line(prompts[0])
    assert (first.prompt, first.negative, first.width, first.height, first.seed, first.steps, first.cfg,
            first.sampler) == ("ltdemo, a star", "blurry", 64, 96, 5, 3, 6.5, "k_euler")


def test_sample_prompts_toml_and_json_as_kohya_reads_them(tmp_path):
    (tmp_path / "prompts.toml").write_text(
        '[prompt]\nnegative_prompt = "lowres"\nwidth = 64\nheight = 64\nscale = 5.0\nsample_steps = 4\n'
        '[[prompt.subset]]\nprompt = "a red star"\nseed = 1\n[[prompt.subset]]\nprompt = "a blue star"\nwidth = 128\n')
    (tmp_path / "prompts.json").write_text(json.dumps(["plain line --w 64", {"prompt": "dict", "seed": 9}]))
    toml_prompts = [parse_prompt_line(p) for p in
                    TrainConfig.from_dict({"sample_prompts": "prompts.toml"}, base_dir=tmp_path).sample_prompts]
    assert [(p.prompt, p.negative, p.width, p.seed, p.steps, p.cfg) for p in toml_prompts] == [
        ("a red star", "lowres", 64, 1, 4, 5.0), ("a blue star", "lowres", 128, None, 4, 5.0)]
    json_prompts = [parse_prompt_line(p) for p in
                    TrainConfig.from_dict({"sample_prompts": str(tmp_path / "prompts.json")}).sample_prompts]
    assert [(p.prompt, p.width, p.seed) for p in json_prompts] == [("plain line", 64, None), ("dict", None, 9)]


def test_a_missing_prompt_file_warns_and_trains_without_samples(tmp_path):
    config, messages = load({"sample_prompts": "nowhere/prompts.txt"}, base_dir=tmp_path)
    assert config.sample_prompts == []
    assert any("sample_prompts file 'nowhere/prompts.txt' not found" in m for m in messages)
    # our own forms are untouched: a list, or lines of text
    assert load({"sample_prompts": ["a", "b"]})[0].sample_prompts == ["a", "b"]
    assert load({"sample_prompts": "one\ntwo.txt"})[0].sample_prompts == ["one", "two.txt"]


def test_prompt_options_kohya_does_not_know_stay_out_of_the_prompt():
    s = parse_prompt_line("a cat --g 3.5 --w 64 --zz what --cn x.png")
    assert (s.prompt, s.width) == ("a cat", 64)
