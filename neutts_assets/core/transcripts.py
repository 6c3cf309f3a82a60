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
  surrounding whitespace; NUL characters are removed and lone surrogates replaced, each noted.
"""

from __future__ import annotations

import json
import math
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


def _label(raw: dict, field: str, notes: list[str] | None = None) -> str:
    value = raw.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_LABELS[field]
    return _clean(str(value), field, notes) or DEFAULT_LABELS[field]


def _times_in_seconds(segments: list[TranscriptSegment]) -> str:
    """A reason when the times are plainly seconds: at least two segments with a length, and none
    as long as SECONDS_HINT_MS. Read as milliseconds every one of them would be skipped as too
    short; read as seconds they are ordinary utterances. Empty otherwise."""
    lengths = [s.end_ms - s.start_ms for s in segments if s.end_ms > s.start_ms]
    if len(lengths) < 2 or max(lengths) >= SECONDS_HINT_MS:
        return ""
    last = max(s.end_ms for s in segments)
    return (f"times look like seconds, not milliseconds: the longest of its {len(lengths)} segments lasts "
            f"{max(lengths):g} ms and the last ends at {last:g} ms ({max(lengths):g} s and {last:g} s read as seconds); "
            "write start_ms/end_ms in milliseconds")


# No real segment lasts under this many ms; every one of a transcript in seconds does (< 2 min).
SECONDS_HINT_MS = 120.0


def parse_transcript(data: bytes, name: str) -> tuple[list[TranscriptSegment], list[SegmentProblem]]:
    """Parses one transcript object. `name` is used in error messages only."""
    if len(data) > MAX_TRANSCRIPT_BYTES:
        raise TranscriptError(f"{name}: {too_large(len(data))}")
    try:
        text = data.decode("utf-8-sig")  # tolerate a BOM, which some editors add
    except UnicodeDecodeError as exc:
        hint = "; it starts with a UTF-16 byte-order mark: save it as UTF-8" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise TranscriptError(f"{name}: not UTF-8 text (byte {exc.start}){hint}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TranscriptError(f"{name}: unreadable JSON: {exc}") from None
    except RecursionError:
        raise TranscriptError(f"{name}: JSON nested too deeply") from None
    if isinstance(doc, dict):
        if "segments" not in doc:
            raise TranscriptError(f"{name}: JSON object has no 'segments' list")
        doc = doc["segments"]
    if not isinstance(doc, list):
        raise TranscriptError(f"{name}: expected a list of segments or {{\"segments\": [...]}}, got {type(doc).__name__}")

    segments: list[TranscriptSegment] = []
    problems: list[SegmentProblem] = []
    seen: dict[tuple[float, float, str], int] = {}  # (start, end, text) -> first segment with them
    for index, raw in enumerate(doc):
        if not isinstance(raw, dict):
            problems.append(SegmentProblem(index, f"segment is a {type(raw).__name__}, not an object"))
            continue
        missing = [f for f in ("start_ms", "end_ms") if f not in raw]
        if missing:
            problems.append(SegmentProblem(index, f"missing {' and '.join(missing)}"))
            continue
        try:
            start, end = _time(raw["start_ms"], "start_ms"), _time(raw["end_ms"], "end_ms")
        except ValueError as exc:
            problems.append(SegmentProblem(index, str(exc)))
            continue
        text = raw.get("text", "")
        if text is None:
            text = ""
        if not isinstance(text, str):
            problems.append(SegmentProblem(index, f"text is a {type(text).__name__}, not a string"))
            continue
        notes: list[str] = []
        text = _clean(text, "text", notes)
        first = seen.setdefault((start, end, text), index)
        if first != index:
            problems.append(SegmentProblem(index, f"same times and text as segment {first}", "duplicate segment"))
            continue
        segments.append(
            TranscriptSegment(
                index=index,
                start_ms=start,
                end_ms=end,
                text=text,
                speaker_id=_label(raw, "speaker_id", notes),
                gender=_label(raw, "gender", notes),
                dialect=_label(raw, "dialect", notes),
                tone=_label(raw, "tone", notes),
                notes=tuple(notes),
            )
        )
    seconds = _times_in_seconds(segments)
    if seconds:
        raise TranscriptError(f"{name}: {seconds}")
    return segments, problems


def too_large(size: int) -> str:
    return f"transcript is {size:,} bytes, over the {MAX_TRANSCRIPT_BYTES // 2**20} MiB limit: not read"
