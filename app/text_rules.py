"""What text a person gives the service may hold (names, transcripts)."""

import unicodedata

__all__ = ["unprintable_character"]

_UNPRINTABLE = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def unprintable_character(text: str, *, allow_whitespace: bool = False) -> str | None:
    """The first character that must not be stored as text, as `U+XXXX`, or None.

    Refused: control characters (a terminal's escape sequences, newlines that forge log lines),
    lone surrogates, line and paragraph separators, and the bidirectional controls that make
    text display in another order than it reads (the "Trojan Source" trick).
    `allow_whitespace`: tabs and newlines pass (where whitespace is normalised later).
    """
    for char in text:
        if allow_whitespace and char in "\t\n\r":
            continue
        if unicodedata.category(char) in _UNPRINTABLE or char in _BIDI_CONTROLS:
            return f"U+{ord(char):04X}"
    return None
