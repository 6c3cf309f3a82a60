"""Reading the users' transcript JSON: a list of timed, speaker-labelled segments.

The format (seed/SOURCE_LAYOUT.md) is either a bare list of segments or {"segments": [...]};
each segment has start_ms, end_ms, text and optional speaker_id, gender, dialect, tone.
A transcript that cannot be read at all raises TranscriptError; a single bad segment becomes a
SegmentProblem so the rest of the transcript is still used.

Decisions on odd but readable input:
- a transcript over MAX_TRANSCRIPT_BYTES is refused unread (a ten-hour recording's is a few MB);
- times that are not utterances in milliseconds refuse the transcript (`timing_problem`), by the
  first of three named rules that fires, its message stating the rule and the numbers that fired it
  (thresholds: the constants by the function), where every segment would otherwise be skipped one
  by one. Each rule needs several segments with a length: one segment is never refused, nor fewer
  than five short ones unless their times are plainly seconds:
  - "seconds": at least 2, every one under 120 ms and the median under 25 ms (no spoken unit is that
    short in milliseconds; read as seconds they are ordinary utterances), or every one under 120 ms
    and fewer than 5 (too few for the word-level rule: two one-minute utterances in seconds);
  - "microseconds": at least 2, every one over 600,000 ms (the longest segment stage 1 cuts);
  - "word level": at least 5, the median under 700 ms and at least 80% under 1 s: milliseconds, but
    words or characters (a forced alignment), not the utterances stage 1 cuts. Utterance-level
    transcripts (median seconds long, short backchannels a minority) never fire it;
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
import statistics
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


# The timing rules (`timing_problem`). Lengths are those of the segments with end_ms > start_ms;
# any other segment is skipped later for its own reason.

# Every rule needs this many lengths: one segment says nothing about the units of the rest.
TIMING_MIN_SEGMENTS = 2

# "seconds": every length under SECONDS_ALL_UNDER_MS and the median under SECONDS_MEDIAN_UNDER_MS.
# 120: read as seconds, every segment is under two minutes, as utterances are. 25: no spoken unit
# lasts that little in milliseconds: an HMM aligner's phones last 30 ms at least (pocketsphinx's in
# shared/data/speech: median 70-80 ms), a character-level alignment's characters 30-80 ms; read as
# seconds a median under 25 s is an ordinary utterance. The median, not the longest, so that a
# character- or phone-level transcript of 30-110 ms gets the word-level message below, not this one.
# A known edge: a CTC alignment keeping only its peaks (most characters one 20 ms frame) has a
# median of 20 ms and reads as seconds; its message states the median, so the reader can tell.
SECONDS_ALL_UNDER_MS = 120.0
SECONDS_MEDIAN_UNDER_MS = 25.0

# "microseconds": every length over the longest segment stage 1 cuts (MAX_SEGMENT_S of
# pipeline/segments/cutting.py, in ms; not imported, as that module imports this one). Every
# segment would be skipped as too long; read as microseconds they are 0.6 s or more.
MICROSECONDS_ALL_OVER_MS = 600_000.0

# "word level": at least WORD_LEVEL_MIN_SEGMENTS lengths, the median under WORD_LEVEL_MEDIAN_UNDER_MS
# and at least WORD_LEVEL_SHORT_SHARE of them under WORD_LEVEL_SHORT_MS. 5: a recording of two to
# four short turns ("yeah", "okay") is a real utterance transcript, not evidence of words. 700: a
# spoken word lasts 100-600 ms (the pocketsphinx words in shared/data/speech: median 220-260
# ms, longest 810), an utterance seconds (the sonnet's lines there: median 3.3 s, shortest 2.2 s).
# 1 s and 80%: an utterance transcript's backchannels and short phrases are a minority of it (a
# third is already a lot); a word alignment has hardly any word as long.
WORD_LEVEL_MIN_SEGMENTS = 5
WORD_LEVEL_MEDIAN_UNDER_MS = 700.0
WORD_LEVEL_SHORT_MS = 1000.0
WORD_LEVEL_SHORT_SHARE = 0.8


def timing_problem(segments: list[TranscriptSegment]) -> str:
    """Why the segments' times are not utterances in milliseconds, by the first rule that fires
    ("seconds", "microseconds", "word level"; see the constants above), or "" when none does.
    Pure: the message states the rule and the numbers that fired it."""
    lengths = sorted(s.end_ms - s.start_ms for s in segments if s.end_ms > s.start_ms)
    if len(lengths) < TIMING_MIN_SEGMENTS:
        return ""
    last = max(s.end_ms for s in segments)
    for rule in (_in_seconds, _in_microseconds, _word_level):
        problem = rule(lengths, last)
        if problem:
            return problem
    return ""


def _in_seconds(lengths: list[float], last: float) -> str:
    median = statistics.median(lengths)
    # Too few for the word-level rule: all under 120 ms is then seconds, whatever the median (two
    # one-minute utterances written in seconds would otherwise be cut as nothing, silently).
    if lengths[-1] >= SECONDS_ALL_UNDER_MS or (
        median >= SECONDS_MEDIAN_UNDER_MS and len(lengths) >= WORD_LEVEL_MIN_SEGMENTS
    ):
        return ""
    longest = _num(lengths[-1])
    why = (
        f"the median is {_num(median)} ms, under {SECONDS_MEDIAN_UNDER_MS:g} ms, shorter than any spoken unit"
        if median < SECONDS_MEDIAN_UNDER_MS
        else f"too few to be a word-level transcript (under {WORD_LEVEL_MIN_SEGMENTS})"
    )
    return (
        f"times look like seconds, not milliseconds ({longest} s and {_num(last)} s read as seconds): the rule: "
        f"every one of its {len(lengths)} segments is under {SECONDS_ALL_UNDER_MS:g} ms and {why} (the longest "
        f"lasts {longest} ms, the last ends at {_num(last)} ms); write start_ms/end_ms in milliseconds"
    )


def _in_microseconds(lengths: list[float], last: float) -> str:
    if lengths[0] <= MICROSECONDS_ALL_OVER_MS:
        return ""
    return (
        f"times look like microseconds, not milliseconds ({_num(lengths[0] / 1000)} ms and {_num(last / 1000)} ms "
        f"read as microseconds): the rule: every one of its {len(lengths)} segments is over "
        f"{_num(MICROSECONDS_ALL_OVER_MS)} ms, the longest segment stage 1 cuts (the shortest lasts "
        f"{_num(lengths[0])} ms, the last ends at {_num(last)} ms); write start_ms/end_ms in milliseconds"
    )


def _word_level(lengths: list[float], last: float) -> str:
    # No word "second" in this message: the times are milliseconds, the segments are too small.
    if len(lengths) < WORD_LEVEL_MIN_SEGMENTS:
        return ""
    median = statistics.median(lengths)
    short = sum(length < WORD_LEVEL_SHORT_MS for length in lengths)
    if median >= WORD_LEVEL_MEDIAN_UNDER_MS or short < WORD_LEVEL_SHORT_SHARE * len(lengths):
        return ""
    return (
        f"looks like a word-level (or character-level) transcript: {short} of its {len(lengths)} segments "
        f"are under {WORD_LEVEL_SHORT_MS / 1000:g} s (the rule: {WORD_LEVEL_SHORT_SHARE:.0%} or more of "
        f"{WORD_LEVEL_MIN_SEGMENTS} or more) and the median is {_num(median)} ms "
        f"(under {WORD_LEVEL_MEDIAN_UNDER_MS:g} ms), the longest {_num(lengths[-1])} ms; stage 1 cuts utterances: "
        "give it utterance-level segments (one per sentence or speaker turn)"
    )


def _num(value: float) -> str:
    """A time for a message: 6.79, 2.01 (not 2.0100000000000002), 2,010,000."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{round(value, 3):g}"


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
    problem = timing_problem(segments)
    if problem:
        raise TranscriptError(f"{name}: {problem}")
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
