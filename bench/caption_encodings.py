"""How often non-UTF-8 captions are read right: trainer.data.caption_encoding.decode_text against
charset-normalizer's own best(), on short captions saved in the code pages Windows calls "ANSI".

    python bench/caption_encodings.py

The result depends on this machine's locale (decode_text prefers the local ANSI code page); the
numbers in caption_encoding's docstring are from a UTF-8 locale.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charset_normalizer import from_bytes  # noqa: E402

from trainer.data.caption_encoding import decode_text  # noqa: E402

CAPTIONS = {
    "gb18030": ["一只可爱的小猫, 高清", "杰作, 最佳质量, 1girl, 长发, 微笑", "一个穿红裙子的女孩站在花园里",
                "风景, 山, 湖, 日落, 高清摄影", "ltchar, 黑色长发, 白色连衣裙", "可爱的狗", "古风少女，汉服，樱花树下",
                "赛博朋克城市夜景, 霓虹灯", "小猫", "高清", "一只猫", "美丽的风景", "女孩, 长发, 微笑", "古风",
                "汉服少女, 樱花", "1girl, 红色连衣裙, 城市街道"],
    "big5": ["一隻可愛的小貓, 高清", "傑作, 最佳品質, 長髮女孩", "穿紅裙子的女孩站在花園裡", "風景, 山, 湖, 日落"],
    "cp932": ["可愛い猫、高画質", "傑作, 最高品質, 1girl, 長い髪", "赤いドレスの女の子", "風景、山、湖、夕焼け"],
    "cp949": ["귀여운 고양이, 고화질", "걸작, 최고 품질, 긴 머리 소녀", "빨간 드레스를 입은 소녀", "풍경, 산, 호수, 일몰"],
    "cp1251": ["милая кошка, высокое качество", "девушка в красном платье", "пейзаж, горы, озеро, закат"],
    "cp1252": ["café crème, naïve girl", "ltchar, café, smile", "Ünterwasser, Größe, schön",
               "niña sonriente, vestido rojo, señorita", "garçon, forêt, été", "Mädchen mit Hut, Straße",
               "“quoted” – smile", "crème brûlée, déjà vu, œuvre", "niña", "café", "Pokémon", "señor", "crème",
               "façade", "über", "naïve", "résumé", "jalapeño", "Zoë", "déjà vu", "Björk", "Ångström", "smørrebrød",
               "garçon", "1girl, niña, smile", "pokémon, pikachu, outdoors", "a café in Paris, night",
               "über cool jacket, street", "portrait of Zoë, freckles", "ltchar, señorita, red dress, flowers",
               "résumé photo, suit, tie", "Björk style, avant-garde", "jalapeño pizza, food photo"],
    "cp1250": ["dziewczyna w czerwonej sukience, łąka, źródło", "žena, šaty, řeka"],
}


def main() -> None:
    ours = theirs = total = 0
    for encoding, texts in CAPTIONS.items():
        for text in texts:
            data = text.encode(encoding)
            try:
                data.decode("utf-8")
                continue  # valid UTF-8 by chance: read as UTF-8, not a detection case
            except UnicodeDecodeError:
                pass
            total += 1
            got = decode_text(data)
            best = from_bytes(data).best()
            ours += got.text == text
            theirs += best is not None and str(best) == text
            if got.text != text:
                print(f"  miss {encoding:8} {text!r} -> {got.text!r} ({got.encoding})")
    print(f"decode_text: {ours}/{total} right; charset-normalizer best(): {theirs}/{total}")


if __name__ == "__main__":
    main()
