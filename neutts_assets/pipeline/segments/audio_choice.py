"""Which audio object a recording is cut from when it has several (`r1.wav` next to `r1.mp3`).

The rule, pure, on what decoding each copy found:
- the copies are tried in the inventory's order (source_layout.AUDIO_EXTENSIONS: complete files
  before partial downloads, then .wav, .flac, .m4a, .mp3, .ogg, .opus, .webm, then by key);
- the first that decodes and covers the transcript is used: its audio reaches the end of the last
  segment the transcript would have cut, less COVER_SLACK_S. The copies after it are not decoded;
- a copy that cannot be read or decoded never wins, nor one much shorter than another: when no
  copy covers the transcript, the longest is used (the first in order among those within
  COVER_SLACK_S of it, so a few ms of codec padding does not decide);
- when no copy can be used, the recording fails, naming each copy and its reason.
The reason is kept on the recording's index as a note and listed in segments_npz's `audio_choices`.
"""

from __future__ import annotations

from dataclasses import dataclass

# A transcript's last segment often runs a little past the audio's end (it is then clipped, with a
# note); a copy short by more than this is missing speech that another copy may have.
COVER_SLACK_S = 1.0


@dataclass(frozen=True)
class Tried:
    key: str
    seconds: float | None  # the decoded audio's length; None when the copy could not be used
    error: str = ""  # why it could not be used


def covers(seconds: float, needed_s: float) -> bool:
    return seconds + COVER_SLACK_S >= needed_s


def done_trying(tried: Tried, needed_s: float) -> bool:
    """Whether the copies after `tried` need no decoding: it decodes and covers the transcript."""
    return tried.seconds is not None and covers(tried.seconds, needed_s)


def choose(tried: list[Tried], needed_s: float, total: int) -> tuple[int | None, str]:
    """The index in `tried` of the copy to cut, or None when none can be used; and why, in words.
    `total`: how many copies the recording has (the ones after a covering copy are not tried)."""
    usable = [i for i, t in enumerate(tried) if t.seconds is not None]
    if not usable:
        return None, f"none of its {total} audio objects can be used: " + "; ".join(
            f"{t.key}: {t.error}" for t in tried
        )
    covering = [i for i in usable if covers(tried[i].seconds, needed_s)]
    if covering:
        pick = covering[0]
    else:
        longest = max(tried[i].seconds for i in usable)
        pick = next(i for i in usable if tried[i].seconds + COVER_SLACK_S >= longest)
    used = tried[pick]
    passed = [_passed_over(t, needed_s) for t in tried[:pick]] + [
        _passed_over(t, needed_s) for t in tried[pick + 1 :] if t.seconds is None or not covering
    ]
    if pick == 0 and covering:
        why = f"the first of {total} audio objects in the order tried; it decodes and covers the transcript"
    elif covering:
        why = f"it decodes and covers the transcript ({used.seconds:.1f} s of audio)"
    else:
        why = (
            f"no copy covers the transcript (its segments run to {needed_s:.1f} s): the longest is used "
            f"({used.seconds:.1f} s)"
        )
    return pick, f"used of {total} audio objects: {why}" + (f"; {'; '.join(passed)}" if passed else "")


def _passed_over(t: Tried, needed_s: float) -> str:
    if t.seconds is None:
        return f"{t.key} cannot be used: {t.error}"
    return (
        f"{t.key} is much shorter than the transcript needs ({t.seconds:.1f} s of audio, "
        f"its segments run to {needed_s:.1f} s)"
        if not covers(t.seconds, needed_s)
        else f"{t.key} decodes too ({t.seconds:.1f} s)"
    )
