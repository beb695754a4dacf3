"""Attention weights written in a caption or prompt, A1111's syntax as kohya reads it
(``weighted_captions``; kohya-ss/sd-scripts strategy_base.TokenizeStrategy._get_weighted_input_ids):

* ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` by 1/1.1; nesting multiplies.
* ``(text:1.3)`` sets the factor to 1.3 (only inside round brackets; a stray ``:1.3)`` is text).
* ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the literal characters; a lone backslash vanishes.
* an unclosed bracket weights everything after it; an unmatched closing one is plain text.
* neighbours with the same weight are merged; an empty text is ``[("", 1.0)]``.

``parse_weights("a (red:1.2) hat")`` -> ``[("a ", 1.0), ("red", 1.2), (" hat", 1.0)]``.
"""

from __future__ import annotations

import re

from ..errors import TrainerError

UP, DOWN = 1.1, 1 / 1.1

# One lexical unit per match, first alternative wins (order matters: escapes before brackets,
# the ":weight)" closer before a plain ")" and before the lone ":").
_UNITS = re.compile(r"""
    \\[()\[\]\\]?          # an escape, or a lone backslash
  | :(?P<weight>[+-]?[.\d]+)\)   # ":1.2)" closes a round bracket with this factor
  | [()\[\]:]              # a bracket, or a ':' that is just text
  | [^\\()\[\]:]+          # plain text
""", re.X)


def parse_weights(text: str) -> list[tuple[str, float]]:
    """(text piece, weight) pairs in order; see the module docstring for the rules."""
    pieces: list[list] = []
    rounds: list[int] = []  # where each open "(" started in ``pieces``
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _UNITS.finditer(text or ""):
        unit, weight = match.group(0), match.group("weight")
        if unit.startswith("\\"):
            pieces.append([unit[1:], 1.0])
        elif unit == "(":
            rounds.append(len(pieces))
        elif unit == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            try:
                factor = float(weight)
            except ValueError:
                raise TrainerError(f"weighted caption {text!r}: '{weight}' is not a number; write e.g. "
                                   "(red hair:1.2).") from None
            scale(rounds.pop(), factor)
        elif unit == ")" and rounds:
            scale(rounds.pop(), UP)
        elif unit == "]" and squares:
            scale(squares.pop(), DOWN)
        else:
            pieces.append([unit, 1.0])
    for start in rounds:
        scale(start, UP)
    for start in squares:
        scale(start, DOWN)
    if not pieces:
        return [("", 1.0)]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, w) for t, w in merged]


def plain_text(text: str) -> str:
    """The text with the weight marks removed (for encoders that take no per-token weights)."""
    return "".join(piece for piece, _ in parse_weights(text))


def weighted_token_ids(tokenizer, text: str, limit: int) -> tuple[list[int], list[float], bool]:
    """Token ids of ``text`` without BOS/EOS, each with its piece's weight, at most ``limit`` of them;
    each piece is tokenized on its own (as kohya does). Returns (ids, weights, truncated)."""
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in parse_weights(text):
        piece_ids = tokenizer(piece).input_ids[1:-1]
        ids += piece_ids
        weights += [weight] * len(piece_ids)
        if len(ids) > limit:
            break
    truncated = len(ids) > limit
    return ids[:limit], weights[:limit], truncated
