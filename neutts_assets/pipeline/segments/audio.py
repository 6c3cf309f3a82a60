"""Decoding any container the channels hold (wav, mp3, m4a, webm/opus, ogg, flac, partial
downloads) straight to 16 kHz mono 16-bit PCM, once per recording, with ffmpeg.

ffmpeg decodes and resamples in one native pass, about 2-4x faster than librosa.load per
CPU-second (bench/stage1.py: ~420x realtime for webm/opus to ~800x for wav 48 kHz). It runs as
a child process, so decoding overlaps with Python work in other threads without the GIL in the way.

The samples come out of ffmpeg's stdout as a stream (`PcmStream`) and are never held whole:
stage 1 cuts segments as the stream passes (pipeline/segments/cutting.StreamCutter), so a ten-hour recording
(1.15 GB of samples) costs a window of a few seconds of memory and no decoded copy on disk.
"""

from __future__ import annotations

import collections
import fcntl
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
BLOCK_SAMPLES = 262_144  # per read from the pipe: 512 KiB, 16 s of audio
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; Python < 3.10 lacks the name


class AudioDecodeError(ValueError):
    """The object is not decodable audio; the message names it and quotes ffmpeg's reason."""


class DecoderFailure(RuntimeError):
    """ffmpeg failed for a reason outside the file (killed, out of disk or memory): worth retrying,
    so it must never be recorded as the object being bad."""


# ffmpeg's words for a failing machine rather than a failing file.
_MACHINE_ERRORS = ("No space left on device", "Cannot allocate memory", "Too many open files")

# What ffmpeg's demuxers call the containers our extensions stand for ("Input #0, mov,mp4,m4a,...").
CONTAINERS = {
    ".wav": {"wav"},
    ".flac": {"flac"},
    ".m4a": {"mov", "mp4", "m4a"},
    ".mp3": {"mp3"},
    ".ogg": {"ogg"},
    ".opus": {"ogg"},
    ".webm": {"matroska", "webm"},
}


def ffmpeg_binary() -> str:
    import shutil

    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("ffmpeg is not installed: apt-get install ffmpeg (the README's set-up does this)")
    return path


class PcmStream:
    """ffmpeg decoding the first audio stream of `path` to mono int16 at `sample_rate`, read from
    its stdout block by block:

        with PcmStream(path, name) as stream:
            for block in stream.blocks():   # int16 arrays; the last check happens when they end
                ...

    `blocks()` raises AudioDecodeError (the file is bad: the message names `name` and ffmpeg's
    reason) or DecoderFailure (the machine is: retry) once ffmpeg has exited, after the last
    block. Leaving the `with` early kills ffmpeg. Channels are averaged (ffmpeg's -ac 1 downmix).
    """

    def __init__(
        self,
        path: str | Path,
        name: str | None = None,
        sample_rate: int = SAMPLE_RATE,
        block_samples: int = BLOCK_SAMPLES,
    ):
        self.path, self.name, self.sample_rate, self.block_samples = (
            str(path),
            name or str(path),
            sample_rate,
            block_samples,
        )
        self.samples = 0  # delivered so far
        self.container = ""  # ffmpeg's name of the input's container, once known ("wav", "mov,mp4,m4a,...")
        self._proc: subprocess.Popen | None = None
        self._stderr: collections.deque[tuple[str, str]] = collections.deque(maxlen=200)  # (level, text)
        self._reader: threading.Thread | None = None

    def __enter__(self) -> PcmStream:
        cmd = [
            ffmpeg_binary(),
            "-nostdin",
            "-hide_banner",
            "-nostats",
            # info level for the "Input #0, <container>" line; each line tagged with its level, so
            # errors can still be told from the chatter.
            "-loglevel",
            "level+info",
            "-i",
            self.path,
            "-map",
            "0:a:0",  # the first audio stream; video and cover art are ignored
            "-vn",
            "-sn",
            "-dn",
            "-ac",
            "1",
            "-ar",
            str(self.sample_rate),
            # Frames of 32768 samples instead of the codec's ~1000: far fewer writes (1.2x-1.9x
            # faster, measured); p=0 leaves the last frame unpadded, so the samples are unchanged.
            "-af",
            "asetnsamples=n=32768:p=0",
            "-f",
            "s16le",
            "-acodec",
            "pcm_s16le",
            "pipe:1",
        ]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:  # a 1 MiB pipe (32 s of samples) lets ffmpeg decode on while a segment is uploaded
            fcntl.fcntl(self._proc.stdout.fileno(), _F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # over the system's pipe-max-size: the default 64 KiB works, with less overlap
        # stderr is drained beside stdout: a corrupt file can log thousands of lines, and a full
        # stderr pipe would stall ffmpeg while we wait on stdout.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        return self

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            match = _LOG_LINE.match(raw.decode("utf-8", "replace").rstrip())
            if match is None:
                continue
            level, text = match["level"], match["text"].strip()
            if level == "info":
                if not self.container and text.startswith("Input #0, "):
                    self.container = text[len("Input #0, ") :].split(", from ", 1)[0]
            elif text:
                self._stderr.append((level, text))

    def blocks(self) -> Iterator[np.ndarray]:
        assert self._proc is not None and self._proc.stdout is not None, "use PcmStream in a with statement"
        want = self.block_samples * 2
        carry = b""
        while True:
            data = self._proc.stdout.read(want)
            if not data:
                break
            if carry:
                data, carry = carry + data, b""
            if len(data) % 2:  # a pipe read can end mid-sample
                data, carry = data[:-1], data[-1:]
            if data:
                self.samples += len(data) // 2
                yield np.frombuffer(data, dtype="<i2")
        self._finish()

    def _finish(self) -> None:
        assert self._proc is not None and self._reader is not None
        code = self._proc.wait()
        self._reader.join()
        lines = list(self._stderr)
        if code < 0 or any(m in text for _, text in lines for m in _MACHINE_ERRORS):
            raise DecoderFailure(f"{self.name}: ffmpeg failed (exit {code}): {_reason(lines)}")
        if code != 0:
            raise AudioDecodeError(f"{self.name}: ffmpeg cannot decode it: {_reason(lines)}")
        if self.samples == 0:
            raise AudioDecodeError(f"{self.name}: decoded to no audio samples (empty or silent container)")

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdout, self._proc.stderr):
                if pipe is not None:
                    pipe.close()
        if self._reader is not None:
            self._reader.join()

    def container_mismatch(self, ext: str) -> str:
        """A note when the content is not what the object's extension says; ffmpeg decodes by
        content, so such a file is used, and the note says what it really was."""
        expected = CONTAINERS.get(ext.lower())
        found = {c.strip() for c in self.container.split(",") if c.strip()}
        if expected is None or not found or expected & found:
            return ""
        return f"named {ext} but the content is {self.container}: decoded by its content"


def decode_pcm16(path: str | Path, name: str | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole of `path` as mono int16 samples, in memory: for short clips and tests. Stage 1
    streams instead (PcmStream); both give the same samples."""
    with PcmStream(path, name, sample_rate) as stream:
        blocks = list(stream.blocks())
    return np.concatenate(blocks)


# "[error] text" or, from a codec or demuxer, "[pcm_s16le @ 0x55b0ebebcec0] [error] text".
_LOG_LINE = re.compile(r"^(?:\[[^\]]*\] )?\[(?P<level>[a-z]+)\] (?P<text>.*)$")


def _reason(lines: list[tuple[str, str]]) -> str:
    errors = [text for level, text in lines if level in ("error", "fatal", "panic")] or [text for _, text in lines]
    if any("matches no streams" in ln or "does not contain any stream" in ln for ln in errors):
        return "no audio stream in the file"
    # The last lines carry the cause ("Invalid data found when processing input", "unknown codec"...).
    return " | ".join(errors[-2:])[:300] or "unknown error"


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0
