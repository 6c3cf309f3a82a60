"""Planning stage 2 from two listings: what is finished, what a codec change or a re-cut stage-1
segment makes stale, what must be checked, what is gone; and the manifest hf_dataset reads."""

from __future__ import annotations

from neutts_assets.pipeline.encoding.manifest import encoded_manifest
from neutts_assets.pipeline.encoding.store import Stage2Layout, plan_encoding
from neutts_assets.pipeline.segments.manifest import SegmentsManifest

A, B = "neuphonic/neucodec@aaaa", "neuphonic/neucodec@bbbb"
LAYOUT = Stage2Layout("ch")


def manifest(*durations):
    return SegmentsManifest.from_dict(stage1_document(*durations))


def stage1_document(*durations):
    return {
        "channel": "ch",
        "recordings": [
            {
                "recording_id": "r",
                "audio_key": "x",
                "segments": [
                    {
                        "key": f"stage1/ch/r_seg_{i}.npz",
                        "audio_id": f"r_seg_{i}",
                        "duration_sec": d,
                        "bytes": 100,
                        "speaker_id": "S",
                    }
                    for i, d in enumerate(durations)
                ],
            }
        ],
    }


def sources(n, version="v1"):
    return {f"stage1/ch/r_seg_{i}.npz": (version, 100) for i in range(n)}


def finished(codec, n, version="v1"):
    keys = set()
    for i in range(n):
        keys |= {LAYOUT.segment_key(f"r_seg_{i}"), LAYOUT.marker_key(codec, f"r_seg_{i}", version)}
    return keys


def test_nothing_written_yet_everything_to_do_short_ones_skipped():
    plan = plan_encoding(manifest(1.0, 0.01, 2.0), LAYOUT, A, sources(3), set(), 320)
    assert [i.audio_id for i in plan.todo] == ["r_seg_0", "r_seg_2"]
    assert plan.too_short == [("r_seg_1", "too short for the codec: 160 samples, needs at least 320")]
    assert plan.todo[0].target_key == "stage2_with_codes/ch/r_seg_0.npz" and plan.todo[0].num_samples == 16000
    assert not plan.todo[0].unverified and not plan.todo[0].stale_markers


def test_marked_files_are_done_and_a_codec_change_makes_them_stale():
    keys = finished(A, 2)
    assert plan_encoding(manifest(1.0, 2.0), LAYOUT, A, sources(2), keys, 320).done == ["r_seg_0", "r_seg_1"]
    plan = plan_encoding(manifest(1.0, 2.0), LAYOUT, B, sources(2), keys, 320)
    assert not plan.done and len(plan.todo) == 2
    item = plan.todo[0]
    assert item.unverified and item.stale_markers == [LAYOUT.marker_key(A, "r_seg_0", "v1")]
    assert item.marker_key == LAYOUT.marker_key(B, "r_seg_0", "v1") != item.stale_markers[0]


def test_a_recut_stage1_segment_is_encoded_again():
    plan = plan_encoding(manifest(1.0), LAYOUT, A, sources(1, "v2"), finished(A, 1, "v1"), 320)
    assert [i.audio_id for i in plan.todo] == ["r_seg_0"] and plan.todo[0].stale_markers


def test_a_file_without_its_marker_is_checked_and_a_marker_without_its_file_is_not_trusted():
    keys = {LAYOUT.segment_key("r_seg_0"), LAYOUT.marker_key(A, "r_seg_1", "v1")}
    plan = plan_encoding(manifest(1.0, 2.0), LAYOUT, A, sources(2), keys, 320)
    assert [(i.audio_id, i.unverified) for i in plan.todo] == [("r_seg_0", True), ("r_seg_1", False)]


def test_missing_stage1_files_fail_and_segments_stage1_dropped_are_removed():
    keys = finished(A, 3)
    plan = plan_encoding(manifest(1.0), LAYOUT, A, {}, keys, 320)
    assert plan.missing_source and plan.missing_source[0][0] == "stage1/ch/r_seg_0.npz"
    assert set(plan.orphans) == {
        LAYOUT.segment_key("r_seg_1"),
        LAYOUT.segment_key("r_seg_2"),
        LAYOUT.marker_key(A, "r_seg_1", "v1"),
        LAYOUT.marker_key(A, "r_seg_2", "v1"),
    }
    assert plan.orphans.index(LAYOUT.segment_key("r_seg_1")) < plan.orphans.index(LAYOUT.marker_key(A, "r_seg_1", "v1"))


def test_marker_keys_stay_inside_the_channel_and_parse_back():
    key = LAYOUT.marker_key("any/label@with:odd chars", "r_seg_0", '"etag-with-quotes"')
    assert key.startswith("stage2_with_codes/ch/_encoded/") and key.count("/") == 4
    assert LAYOUT.parse_marker(key) == ("r_seg_0", key)
    assert LAYOUT.parse_marker(LAYOUT.segment_key("r_seg_0")) is None


def test_manifest_lists_only_segments_with_codes():
    m = encoded_manifest(
        manifest(1.0, 0.01, 2.0), LAYOUT, A, False, {"r_seg_0", "r_seg_2"}, [("r_seg_1", "too short")], []
    ).to_dict()  # the document the IO manager stores and hf_dataset reads
    segs = m["recordings"][0]["segments"]
    assert [s["key"] for s in segs] == ["stage2_with_codes/ch/r_seg_0.npz", "stage2_with_codes/ch/r_seg_2.npz"]
    assert [s["n_codes"] for s in segs] == [50, 100] and m["code_count"] == 150
    assert m["codec"] == A and m["test_only_codes"] is False and m["segment_count"] == 2
    assert m["skipped"] == [{"audio_id": "r_seg_1", "reason": "too short"}]
