"""User-given names never leave their folder: one sanitiser (trainer/names.py) for the CLI and nodes."""

import ntpath
import subprocess
import sys
import unicodedata
import warnings
from pathlib import PurePosixPath, PureWindowsPath

import pytest

from conftest import ROOT, paint
from trainer.config import TrainConfig
from trainer.errors import TrainerError
from trainer.names import inside, safe_name

HOSTILE = ["../", "../../escaped", "/etc/x", "C:\\x", "con", "CON.txt", "nul", "", "a/b", "a\\b", "..", ".",
           "   ", "aux.tar.gz", "LPT1", "com9.safetensors", "x. . ", ".hidden", "a\x00b\nc\x1b[31m", "a:b?c*<d>|e\"",
           "\\\\server\\share\\x", "..\\..\\..\\w", "x" * 400, "中" * 300, "😀" * 100, "name\u202egnp.exe"]
KEPT = ["my lora v2", "中文角色", "Kolors 人物_v1.2", "café-déjà", "ltchar (anime)"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def windows_reserved(name: str) -> bool:
    if hasattr(ntpath, "isreserved"):  # Python 3.13+
        return ntpath.isreserved(name)
    return PureWindowsPath(name).is_reserved()


@pytest.mark.parametrize("name", HOSTILE + KEPT)
def test_every_name_becomes_one_valid_file_name_on_every_os(name, tmp_path):
    safe = safe_name(name)
    assert safe and safe not in (".", "..") and not safe.startswith(".")
    assert PurePosixPath(safe).name == safe and PureWindowsPath(safe).name == safe  # one component, both OSes
    assert not PureWindowsPath(safe).drive and not PurePosixPath(safe).is_absolute()
    assert not windows_reserved(safe), safe
    assert not any(c in safe for c in '<>:"|?*') and safe == safe.rstrip(". ")
    assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in safe)
    assert len(safe) <= 64 and len(safe.encode()) <= 180
    assert safe_name(safe) == safe  # already safe names pass unchanged
    # the longest file the trainer makes from it still fits a 255-byte file-name limit, inside its folder
    path = inside(tmp_path, f".{safe}_sample_00_s000000.png.abcdefgh.tmp")
    path.write_text("x")
    assert path.parent == tmp_path and path.is_file()


def test_path_parts_are_dropped_and_names_are_kept():
    assert safe_name("../../escaped") == safe_name("/escaped") == safe_name("C:\\escaped") == "escaped"
    assert safe_name("a/b") == safe_name("a\\b") == "a_b"
    for name in ("", "..", ".", "../", "  "):
        assert safe_name(name) == "lora" and safe_name(name, default="x") == "x"
    for name in KEPT:
        assert safe_name(name) == name  # letters of any script, spaces, dots, brackets stay
    assert safe_name("con").lower() != "con" and safe_name("CON.txt").endswith(".txt")


def test_inside_refuses_anything_but_a_direct_child(tmp_path):
    for bad in ("../x", "..", ".", "", "/etc/x", "a/b", "a\\b", str(tmp_path / "x")):
        with pytest.raises(TrainerError, match="outside"):
            inside(tmp_path, bad)
    assert inside(tmp_path, "中文.safetensors") == tmp_path / "中文.safetensors"


def test_config_makes_output_name_safe_and_says_so():
    with pytest.warns(UserWarning, match="'../../escaped' is not a plain file name: using 'escaped'"):
        config = TrainConfig.from_dict({"output_name": "../../escaped"})
    assert config.output_name == "escaped"
    direct = TrainConfig(output_name="/abs/con")  # built in code, checked when training starts
    with pytest.warns(UserWarning):
        direct.validate()
    assert direct.output_name == "abs_con"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a safe name passes silently
        assert TrainConfig.from_dict({"output_name": "中文角色"}).validate().output_name == "中文角色"


def test_lora_save_node_uses_the_same_sanitiser(pack):
    stem = pack.nodes.lora.lora_stem
    assert stem("../stars.safetensors") == "stars" and stem("中文.SAFETENSORS") == "中文"
    assert stem("CON.safetensors") == safe_name("CON") and stem("") == "my_lora"


def test_cli_run_with_escaping_name_writes_only_inside_output_dir(tiny_models, tmp_path):
    data = tmp_path / "data"
    for i in range(2):
        paint(data / f"{i}.png", colour=(200, 40 * i, 0))
        (data / f"{i}.txt").write_text("ltdemo, a square")
    out = tmp_path / "a" / "b" / "out"
    config = tmp_path / "run.toml"
    config.write_text(
        f'pretrained_model_name_or_path = "{tiny_models("sd15")}"\ntrain_data_dir = "{data}"\n'
        f'output_dir = "{out}"\noutput_name = "../../escaped"\nresolution = "64"\nnetwork_dim = 2\n'
        'train_batch_size = 2\nmax_train_epochs = 2\nsave_every_n_epochs = 1\nsave_state = true\n'
        'sample_prompts = ["ltdemo --s 1 --w 64 --h 64"]\nsample_every_n_epochs = 1\n')
    before = {p for p in tmp_path.rglob("*")}
    run = cli("train", "--config", config)
    assert run.returncode == 0, run.stderr
    assert "'../../escaped' is not a plain file name: using 'escaped'" in run.stderr
    written = {p for p in tmp_path.rglob("*")} - before
    outside = [p for p in written if p != out and out not in p.parents and p not in out.parents]
    assert not outside, outside
    names = {p.relative_to(out).as_posix() for p in written if out in p.parents}
    assert {"escaped.safetensors", "escaped_loss.csv", "escaped_loss.png", "escaped-000001.safetensors",
            "escaped-state/progress.json", "samples/escaped_sample_00_e000001.png"} <= names
