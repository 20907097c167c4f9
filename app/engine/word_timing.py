"""Word timestamps from the decoder's cross-attention, as openai-whisper and faster-whisper find
them: the window's text is run through the decoder once more, the alignment heads' attention
over the audio frames is normalised per frame and median-filtered, and dynamic time warping
finds the monotonic path from tokens to frames; a word starts where the path enters its first
token and ends where it enters the token after its last."""

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from app.engine.types import Segment, Word

__all__ = ["Wording", "dtw_path", "split_words", "token_times", "with_words"]

MEDIAN_FILTER_WIDTH = 7
"""openai-whisper's and faster-whisper's width, in encoder frames (20 ms each)."""
SECONDS_PER_ENCODER_FRAME = 0.02
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END = frozenset(".。!！?？")
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
"""Languages written without spaces between words: every character is a word."""


def token_times(weights: Tensor, frames: int) -> np.ndarray:
    """`weights` [heads, tokens + 1, encoder frames]: the alignment heads' attention of the rows
    that predict each text token and then the end of text. Returns, for each of those rows, the
    time in seconds (from the window's start) at which the path enters it: token i spans
    [times[i], times[i + 1])."""
    attention = weights[:, :, :frames].float()
    std, mean = torch.std_mean(attention, dim=-2, keepdim=True, unbiased=False)
    attention = (attention - mean) / std.clamp_min(1e-10)
    matrix = _median_filter(attention, MEDIAN_FILTER_WIDTH).mean(dim=0)
    rows, columns = dtw_path(-matrix.double().numpy())
    entering = np.diff(rows, prepend=-1).astype(bool)
    times: np.ndarray = columns[entering] * SECONDS_PER_ENCODER_FRAME
    return times


def _median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of the last dimension, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = functional.pad(x, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).median(dim=-1).values


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` [rows, columns] from the first cell to the
    last (steps: diagonal, down, right); returns its row and column indices.

    Each row is computed at once rather than cell by cell: with S the row's prefix sums of cost,
    a cell reached from the left after entering the row at column k costs
    S[j] - S[k-1] + best_above(k), so the row is S + a running minimum."""
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf)
    total[0, 0] = 0.0
    came_from = np.zeros((rows + 1, columns + 1), dtype=np.int8)  # 0 diagonal, 1 down, 2 right
    for i in range(1, rows + 1):
        diagonal, down = total[i - 1, :-1], total[i - 1, 1:]
        above = np.minimum(diagonal, down)
        sums = np.cumsum(cost[i - 1])
        entry = above - np.concatenate(([0.0], sums[:-1]))
        best_entry = np.minimum.accumulate(entry)
        total[i, 1:] = sums + best_entry
        from_left = np.concatenate(([False], best_entry[1:] < entry[1:]))
        came_from[i, 1:] = np.where(from_left, 2, np.where(down < diagonal, 1, 0))
    return _backtrack(came_from)


def _backtrack(came_from: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = came_from.shape[0] - 1, came_from.shape[1] - 1
    path: list[tuple[int, int]] = []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = came_from[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    indices = np.array(path, dtype=np.int64).reshape(-1, 2)
    return indices[:, 0], indices[:, 1]


@dataclass(frozen=True, slots=True)
class Wording:
    """How a model's tokens become words."""

    decode: Callable[[list[int]], str]
    eot: int
    """Tokens from here on are special (timestamps included), not text."""
    language: str


@dataclass(frozen=True, slots=True)
class _Piece:
    """A word, or a punctuation mark before punctuation joins its word, with its time."""

    text: str
    start: float
    end: float


def with_words(
    segments: list[Segment], times: np.ndarray, offset: float, wording: Wording
) -> list[Segment]:
    """One window's `segments` with their words; `times` per text token of the window (from
    `token_times`), `offset` the window's start in seconds.

    openai-whisper's corrections follow the alignment, as faster-whisper's do: a sentence's
    final mark, which the path holds until the next speech, is cut to twice the median word
    length (at most 0.7 s), and a first or last word that runs well past its segment's own
    timestamp is brought back to it."""
    pieces: list[list[_Piece]] = []
    first = 0
    for segment in segments:
        text = [token for token in segment.tokens if token < wording.eot]
        spans = split_words(text, wording.decode, wording.language)
        pieces.append([_piece(word, a + first, b + first, times, offset) for word, a, b in spans])
        first += len(text)
    durations = [p.end - p.start for ps in pieces for p in ps if p.end > p.start]
    median = min(0.7, float(np.median(durations))) if durations else 0.0
    timed = []
    for segment, own in zip(segments, pieces, strict=True):
        words = _merge_punctuation(_cut_sentence_ends(own, 2 * median))
        words = _within_segment(words, segment, median)
        timed.append(
            replace(
                segment, words=[Word(w.text, round(w.start, 3), round(w.end, 3)) for w in words]
            )
        )
    return timed


def _piece(text: str, first: int, end: int, times: np.ndarray, offset: float) -> _Piece:
    """Tokens [first, end) start when the path enters the first and end when it enters the
    token after the last (the end of text after the window's last word)."""
    return _Piece(
        text, offset + float(times[first]), offset + float(times[min(end, len(times) - 1)])
    )


def split_words(
    tokens: Sequence[int], decode: Callable[[list[int]], str], language: str
) -> list[tuple[str, int, int]]:
    """`tokens` (text only) as (text, first, end) words: split on spaces and punctuation, or per
    character for languages written without spaces (openai-whisper's rules)."""
    pieces = _unicode_pieces(tokens, decode)
    return pieces if language in NO_SPACE_LANGUAGES else _space_words(pieces)


def _unicode_pieces(
    tokens: Sequence[int], decode: Callable[[list[int]], str]
) -> list[tuple[str, int, int]]:
    """(text, first, end) pieces that each decode to whole characters (a character may take
    several byte tokens)."""
    pieces: list[tuple[str, int, int]] = []
    start = 0
    for end in range(1, len(tokens) + 1):
        text = decode(list(tokens[start:end]))
        if "\ufffd" not in text or end == len(tokens):
            pieces.append((text, start, end))
            start = end
    return pieces


def _space_words(pieces: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    words: list[tuple[str, int, int]] = []
    for text, start, end in pieces:
        starts_word = text.startswith(" ") or text.strip() in string.punctuation
        if starts_word or not words:
            words.append((text, start, end))
        else:
            previous, first, _ = words[-1]
            words[-1] = (previous + text, first, end)
    return words


def _cut_sentence_ends(pieces: list[_Piece], longest: float) -> list[_Piece]:
    """A sentence's final mark held past `longest` ends `longest` after it starts; the word
    after it, if longer, starts `longest` before it ends."""
    cut = list(pieces)
    for i in range(1, len(cut)):
        piece = cut[i]
        if piece.end - piece.start <= longest or longest <= 0:
            continue
        if piece.text.strip() in SENTENCE_END:
            cut[i] = replace(piece, end=piece.start + longest)
        elif cut[i - 1].text.strip() in SENTENCE_END:
            cut[i] = replace(piece, start=piece.end - longest)
    return cut


def _merge_punctuation(pieces: list[_Piece]) -> list[_Piece]:
    """Opening punctuation joins the next word, closing punctuation the previous one."""
    merged: list[_Piece] = []
    opening: _Piece | None = None  # punctuation waiting for the word it opens
    for piece in pieces:
        bare = piece.text.strip()
        if bare and merged and all(c in APPEND_PUNCTUATION for c in bare):
            merged[-1] = _Piece(merged[-1].text + bare, merged[-1].start, piece.end)
        elif bare and all(c in PREPEND_PUNCTUATION for c in bare):
            opening = replace(opening, text=opening.text + bare) if opening else piece
        elif opening is not None:
            merged.append(_Piece(opening.text + piece.text.lstrip(), opening.start, piece.end))
            opening = None
        else:
            merged.append(piece)
    if opening is not None:
        merged.append(opening)
    return merged


def _within_segment(words: list[_Piece], segment: Segment, median: float) -> list[_Piece]:
    """A first word starting more than 0.5 s before its segment's timestamp, or a last one
    ending more than 0.5 s after it, is brought back to that timestamp."""
    if not words:
        return words
    first = words[0]
    if segment.start < first.end and segment.start - 0.5 > first.start:
        words[0] = replace(first, start=max(0.0, min(first.end - median, segment.start)))
    last = words[-1]
    if segment.end > last.start and segment.end + 0.5 < last.end:
        words[-1] = replace(last, end=max(last.start + median, segment.end))
    return words
