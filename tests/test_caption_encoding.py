"""Captions saved in other encodings than UTF-8 are read right and named; bytes that are no text
in any encoding are refused."""

import locale

import numpy as np
import pytest

from trainer.data.caption_encoding import decode_text


@pytest.mark.parametrize("text, encoding, expected", [
    ("一只可爱的小猫, 高清", "gb18030", "gb18030"),  # Chinese Windows "ANSI" (Kolors datasets)
    ("杰作, 最佳质量, 1girl, 长发, 微笑", "gb18030", "gb18030"),
    ("一隻可愛的小貓, 高清", "big5", "big5"),
    ("café crème, naïve girl", "cp1252", "cp1252"),  # charset-normalizer alone says cp1250: "crčme"
    ("1girl, niña, smile", "cp1252", "cp1252"),  # ... and GB18030 "ni馻" here
    ("über cool jacket, street", "cp1252", "cp1252"),
    ("милая кошка, высокое качество", "cp1251", "cp1251"),
    ("귀여운 고양이, 고화질", "cp949", "cp949"),
    ("ltchar, 猫", "utf-16", "utf_16"),  # Notepad's "Unicode"
])
def test_other_encodings_are_detected(text, encoding, expected):
    decoded = decode_text(text.encode(encoding))
    assert (decoded.text, decoded.encoding) == (text, expected)
    assert not decoded.is_utf8


def test_utf8_with_and_without_bom_is_the_fast_path():
    assert decode_text("smile, 猫".encode("utf-8")).encoding == "utf-8"
    decoded = decode_text("\ufeffsmile, 猫".encode("utf-8"))
    assert (decoded.text, decoded.encoding, decoded.is_utf8) == ("smile, 猫", "utf-8-sig", True)


@pytest.mark.parametrize("size", [32, 64, 256, 4096])
def test_random_bytes_are_not_text(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    with pytest.raises(UnicodeDecodeError, match="no text encoding fits its bytes"):
        decode_text(data)


def test_this_machines_ansi_code_page_wins_when_it_fits(monkeypatch):
    # charset-normalizer rates Korean cp949 more plausible for these GB18030 bytes; on Chinese
    # Windows (ANSI code page 936) the local code page is taken.
    data = "赛博朋克城市夜景, 霓虹灯".encode("gb18030")
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "cp936")
    assert decode_text(data).text == "赛博朋克城市夜景, 霓虹灯"
    # ... but not when it would mix scripts inside a word: cp1252 "über" stays cp1252
    assert decode_text("über cool jacket".encode("cp1252")).text == "über cool jacket"
