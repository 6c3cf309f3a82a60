"""Reading the users' transcript JSON: a list of timed, speaker-labelled segments.

The format (seed/SOURCE_LAYOUT.md) is either a bare list of segments or {"segments": [...]};
each segment has start_ms, end_ms, text and optional speaker_id, gender, dialect, tone.
A transcript that cannot be read at all raises TranscriptError; a single bad segment becomes a
SegmentProblem so the rest of the transcript is still used.

Decisions on odd but readable input:
- a transcript over MAX_TRANSCRIPT_BYTES is refused unread (a ten-hour recording's is a few MB);
- times that are plainly seconds, not milliseconds, refuse the transcript with that reason
  (`_times_in_seconds`): every segment would otherwise be skipped as too short, one by one;
- a segment with the same times and text as an earlier one is a duplicate and is skipped,
  naming the one it repeats; segments that merely overlap are kept (crosstalk, or two speakers
  labelled over the same span), each cut with all of its samples;
- text is kept as written (any script, right-to-left marks, diacritics: no normalisation), less
  surrounding whitespace; NUL characters are removed and lone surrogates replaced, each noted;
- text that is empty once invisible characters are left out (`is_visibly_empty`: zero-width
  spaces and joiners, direction marks, bidi embeddings / overrides / isolates, word joiner, BOM,
  soft hyphen, Hangul fillers, variation selectors, any other format (Cf) or control character,
  any whitespace) counts as empty text and is skipped as such (pipeline/segments/cutting.py); text with at least
  one visible character keeps every invisible one as written (RTL marks matter in Arabic).

Labels (speaker_id, gender, dialect, tone) are strings in the files and the dataset, so a label
that is not a JSON string follows one rule, never Python's repr (`_label`):
- missing, null, or a string that is visibly empty (see above): the default (DEFAULT_LABELS);
- a string: as written (less surrounding whitespace; NUL / lone surrogates as for text). Numeric
  strings are not rewritten: "42" stays "42" and "42.0" stays "42.0", so the string "42.0" and the
  number 42 are different speakers; write numbers or consistent strings;
- an integer: its decimal digits (42 -> "42", -3 -> "-3");
- a float that is finite, integral and at most 2**53 in size (exact): the integer's digits, so the
  numbers 42 and 42.0 are one speaker, "42";
- anything else refuses the segment (a SegmentProblem of kind "bad label" naming the field and
  the value): a boolean (true is not a speaker), a non-integral float (42.5), a non-finite or
  inexact one, a list or an object. Guessing a spelling for those would merge or split speakers.
Every number that was written as a string is noted on the segment ("speaker_id: number 42.0
written as '42'"); the notes end up in segments_npz's `input_notes` metadata.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass

# The old tool's defaults for missing labels; training scripts group and filter on these strings.
DEFAULT_LABELS = {"speaker_id": "UNKNOWN", "gender": "unknown", "dialect": "unknown", "tone": "neutral"}


class TranscriptError(ValueError):
    """The transcript as a whole is unusable; the message names the object and the reason."""


@dataclass(frozen=True)
class TranscriptSegment:
    index: int  # position in the transcript: the i of {ID}_seg_{i}
    start_ms: float
    end_ms: float
    text: str
    speaker_id: str = DEFAULT_LABELS["speaker_id"]
    gender: str = DEFAULT_LABELS["gender"]
    dialect: str = DEFAULT_LABELS["dialect"]
    tone: str = DEFAULT_LABELS["tone"]

    notes: tuple[str, ...] = ()  # what was changed in its text, for the run's metadata


@dataclass(frozen=True)
class SegmentProblem:
    index: int
    reason: str
    kind: str = "malformed segment"  # the skip reason it is counted under


# A ten-hour recording's transcript is a few MB; past this it is not read (nor parsed into memory).
MAX_TRANSCRIPT_BYTES = 32 * 1024 * 1024


# About 31 years: anything later is not a time in a recording, and keeps sample arithmetic exact.
MAX_TIME_MS = 1e12


def _time(value: object, field: str) -> float:
    # bool is an int in Python; a transcript saying "start_ms": true is broken, not 1 ms.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} is not a number ({_short(value)})")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise ValueError(f"{field} is out of range ({_short(value)})") from None
    if not math.isfinite(value):
        raise ValueError(f"{field} is not finite ({value})")
    if abs(value) > MAX_TIME_MS:
        raise ValueError(f"{field} is out of range ({value:g} ms)")
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _clean(text: str, field: str = "text", notes: list[str] | None = None) -> str:
    """JSON can carry lone surrogates ("\\ud800") that no UTF-8 writer accepts, and NUL bytes that
    break C-string consumers downstream; both are replaced, so one odd character costs a character,
    not the recording. What was changed is added to `notes`."""
    fixed = text.encode("utf-8", "replace").decode("utf-8")
    if notes is not None and fixed != text:
        notes.append(f"{field}: {sum(a != b for a, b in zip(text, fixed))} unpaired surrogate(s) replaced by '?'")
    if "\x00" in fixed:
        if notes is not None:
            notes.append(f"{field}: {fixed.count(chr(0))} NUL character(s) removed")
        fixed = fixed.replace("\x00", "")
    return fixed.strip()


# Characters that show nothing on their own, named so the rule does not hang on one Unicode
# version's categories: zero-width space / non-joiner / joiner, LRM / RLM, the Arabic letter mark,
# bidi embeddings and overrides (U+202A-E) and isolates (U+2066-9), word joiner, BOM (ZWNBSP),
# soft hyphen, combining grapheme joiner, Mongolian vowel separator, the Hangul fillers, and the
# variation selectors. Any other format (Cf) or control (Cc) character and any whitespace counts too.
INVISIBLE_CHARACTERS = (
    frozenset(
        "\u200b\u200c\u200d\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
        "\u2060\ufeff\u00ad\u034f\u180e\u115f\u1160\u3164\uffa0"
    )
    | frozenset(map(chr, range(0xFE00, 0xFE10)))
    | frozenset(map(chr, range(0xE0100, 0xE01F0)))
)
_INVISIBLE_CATEGORIES = ("Cc", "Cf", "Zs", "Zl", "Zp")


def _invisible(c: str) -> bool:
    return c in INVISIBLE_CHARACTERS or c.isspace() or unicodedata.category(c) in _INVISIBLE_CATEGORIES


def is_visibly_empty(text: str) -> bool:
    """True when `text` shows nothing: it is empty, or every character is invisible (above).
    Pure; such text is skipped as empty text, other text is kept with its invisible characters."""
    return all(_invisible(c) for c in text)


def invisible_codes(text: str, limit: int = 5) -> str:
    """'U+200B, U+200F' for the distinct characters of `text`, for skip details."""
    codes = sorted({f"U+{ord(c):04X}" for c in text})
    return ", ".join(codes[:limit]) + (", ..." if len(codes) > limit else "")


class LabelError(ValueError):
    """A label value that has no single string spelling; the message names the field and the value."""


# Floats at most this large are exact integers; past it 2**53 + 1 reads as 2**53.
_EXACT_FLOAT = 2.0**53


def _label(raw: dict, field: str, notes: list[str] | None = None) -> str:
    """The label as its string (the rule in the module docstring). Raises LabelError."""
    value = raw.get(field)
    if value is None:
        return DEFAULT_LABELS[field]
    if isinstance(value, str):
        text = _clean(value, field, notes)
        if is_visibly_empty(text):
            if text and notes is not None:
                notes.append(
                    f"{field}: only invisible characters ({invisible_codes(text)}), "
                    f"written as the default {DEFAULT_LABELS[field]!r}"
                )
            return DEFAULT_LABELS[field]
        return text
    # bool is an int in Python: checked first. True is no speaker's name, nor 1.
    if isinstance(value, bool):
        raise LabelError(f"{field} is a boolean ({_short(value)}), not a label: write it as a string")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise LabelError(f"{field} is a number that is not finite ({_short(value)}), not a label")
        if value != int(value):
            raise LabelError(f"{field} is a number with a fraction ({_short(value)}): write it as a string")
        if abs(value) > _EXACT_FLOAT:
            raise LabelError(f"{field} is a number too large to be exact ({_short(value)}): write it as a string")
        text = str(int(value))
    else:
        raise LabelError(
            f"{field} is a {'list' if isinstance(value, list) else 'JSON object' if isinstance(value, dict) else type(value).__name__} "
            f"({_short(value)}), not a label"
        )
    if notes is not None:
        notes.append(f"{field}: number {_short(value)} written as {text!r}")
    return text


def _times_in_seconds(segments: list[TranscriptSegment]) -> str:
    """A reason when the times are plainly seconds: at least two segments with a length, and none
    as long as SECONDS_HINT_MS. Read as milliseconds every one of them would be skipped as too
    short; read as seconds they are ordinary utterances. Empty otherwise."""
    lengths = [s.end_ms - s.start_ms for s in segments if s.end_ms > s.start_ms]
    if len(lengths) < 2 or max(lengths) >= SECONDS_HINT_MS:
        return ""
    last = max(s.end_ms for s in segments)
    return (
        f"times look like seconds, not milliseconds: the longest of its {len(lengths)} segments lasts "
        f"{max(lengths):g} ms and the last ends at {last:g} ms ({max(lengths):g} s and {last:g} s read as seconds); "
        "write start_ms/end_ms in milliseconds"
    )


# No real segment lasts under this many ms; every one of a transcript in seconds does (< 2 min).
SECONDS_HINT_MS = 120.0


def parse_transcript(data: bytes, name: str) -> tuple[list[TranscriptSegment], list[SegmentProblem]]:
    """Parses one transcript object. `name` is used in error messages only."""
    segments: list[TranscriptSegment] = []
    problems: list[SegmentProblem] = []
    seen: dict[tuple[float, float, str], int] = {}  # (start, end, text) -> first segment with them
    for index, raw in enumerate(_segment_list(_read_json(data, name), name)):
        parsed = _parse_segment(index, raw, seen)
        if isinstance(parsed, SegmentProblem):
            problems.append(parsed)
        else:
            segments.append(parsed)
    seconds = _times_in_seconds(segments)
    if seconds:
        raise TranscriptError(f"{name}: {seconds}")
    return segments, problems


def _read_json(data: bytes, name: str) -> object:
    """The transcript's JSON document. Raises TranscriptError."""
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{name}: {too_large(len(data))}")
    try:
        text = data.decode("utf-8-sig")  # tolerate a BOM, which some editors add
    except UnicodeDecodeError as exc:
        hint = (
            "; it starts with a UTF-16 byte-order mark: save it as UTF-8"
            if data[:2] in (b"\xff\xfe", b"\xfe\xff")
            else ""
        )
        raise TranscriptError(f"{name}: not UTF-8 text (byte {exc.start}){hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TranscriptError(f"{name}: unreadable JSON: {exc}") from None
    except RecursionError:
        raise TranscriptError(f"{name}: JSON nested too deeply") from None


def _segment_list(doc: object, name: str) -> list:
    """The document's segments: the document itself, or its "segments". Raises TranscriptError."""
    if isinstance(doc, dict):
        if "segments" not in doc:
            raise TranscriptError(f"{name}: JSON object has no 'segments' list")
        doc = doc["segments"]
    if not isinstance(doc, list):
        raise TranscriptError(f'{name}: expected a list of segments or {{"segments": [...]}}, got {type(doc).__name__}')
    return doc


def _parse_segment(
    index: int, raw: object, seen: dict[tuple[float, float, str], int]
) -> TranscriptSegment | SegmentProblem:
    """The transcript's segment at `index`, or why it is none. `seen` maps the (start, end, text) of
    the good segments before it to the first with them, and gets this one's."""
    if not isinstance(raw, dict):
        return SegmentProblem(index, f"segment is a {type(raw).__name__}, not an object")
    missing = [f for f in ("start_ms", "end_ms") if f not in raw]
    if missing:
        return SegmentProblem(index, f"missing {' and '.join(missing)}")
    try:
        start, end = _time(raw["start_ms"], "start_ms"), _time(raw["end_ms"], "end_ms")
    except ValueError as exc:
        return SegmentProblem(index, str(exc))
    text = raw.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        return SegmentProblem(index, f"text is a {type(text).__name__}, not a string")
    notes: list[str] = []
    text = _clean(text, "text", notes)
    try:
        # Before the duplicate check: a refused segment is no original for a later good copy.
        labels = {f: _label(raw, f, notes) for f in DEFAULT_LABELS}
    except LabelError as exc:
        return SegmentProblem(index, str(exc), "bad label")
    first = seen.setdefault((start, end, text), index)
    if first != index:
        return SegmentProblem(index, f"same times and text as segment {first}", "duplicate segment")
    return TranscriptSegment(index=index, start_ms=start, end_ms=end, text=text, **labels, notes=tuple(notes))


def too_large(size: int) -> str:
    return f"transcript is {size:,} bytes, over the {MAX_TRANSCRIPT_BYTES // 2**20} MiB limit: not read"
