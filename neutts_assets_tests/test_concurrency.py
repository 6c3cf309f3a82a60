"""Runs at once on the three stores (a local folder, the S3 server, the GCS emulator): the store
lease that keeps two runs of one asset and channel apart (pipeline/orchestration/lease.py), its take-over when the
holder is dead, and the dataset card when two channels publish at the same moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, materialize

from neutts_assets.defs.inventory.raw_audio import raw_audio
from neutts_assets.defs.segments.segments_npz import segments_npz
from neutts_assets.pipeline.dataset.rows import RowFilter
from neutts_assets.pipeline.dataset.store import CARD_KEY, record_key, shard_prefix
from neutts_assets.pipeline.dataset.writer import build_channel, publish_channel, segment_objects
from neutts_assets.pipeline.orchestration.lease import LeaseHeld, LeaseLost, LeaseRecord, acquire, lease_key
from neutts_assets.pipeline.segments.segment_file import read_segment
from neutts_assets.pipeline.segments.store import channel_prefix
from neutts_assets.storage.gcs import GCSStore
from neutts_assets.storage.local import LocalStore
from neutts_assets.storage.s3 import S3Store
from neutts_assets.storage.store import ObjectStore, StoreError
from neutts_assets_tests.helpers import (
    DEMO_AUDIO,
    DEMO_TRANSCRIPTS,
    S3_ACCESS,
    S3_SECRET,
    asset_metadata,
    audio_key,
    make_resources,
    run_stage1,
    transcript_key,
)

CHANNEL = "concurrent_ch"
# Ten copies of the 53 s sonnet (150 segments): enough work, cut by one worker, for a second run to
# start while the first one holds the lease.
COPIES = [f"sonnet001_copy{i}" for i in range(10)]


@dataclass
class Target:
    kind: str
    store: ObjectStore
    url: str
    endpoint: str | None
    bucket: str | None


@pytest.fixture(params=["local", "s3", "gcs"])
def target(request, tmp_path) -> Target:
    if request.param == "local":
        return Target("local", LocalStore(tmp_path / "store"), str(tmp_path / "store"), None, None)
    if request.param == "s3":
        client, bucket, endpoint = (request.getfixturevalue(f) for f in ("s3_client", "s3_bucket", "s3_endpoint"))
        return Target("s3", S3Store(client, bucket, "segs"), f"s3://{bucket}/segs", endpoint, bucket)
    client, bucket = request.getfixturevalue("gcs_client"), request.getfixturevalue("gcs_bucket")
    return Target("gcs", GCSStore(client, bucket, "segs"), f"gs://{bucket}/segs", None, bucket)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    bucket = LocalStore(root)
    transcript = (DEMO_TRANSCRIPTS / "audio_sonnet001.json").read_bytes()
    audio = (DEMO_AUDIO / "sonnet001.mp3").read_bytes()
    for rec in COPIES:
        bucket.write_bytes(transcript_key(CHANNEL, rec), transcript)
        bucket.write_bytes(audio_key(CHANNEL, f"{rec}.mp3"), audio)
    return root


@pytest.fixture(scope="module")
def single_run(source, tmp_path_factory) -> LocalStore:
    """What one run alone leaves in a store: the reference for the concurrent runs."""
    store = tmp_path_factory.mktemp("single") / "store"
    run_stage1(DagsterInstance.ephemeral(), make_resources(str(source), str(store)), CHANNEL)
    return LocalStore(store)


def _released(store: ObjectStore, asset: str) -> bool:
    current = store.read_versioned(lease_key(asset, CHANNEL))
    return current is not None and LeaseRecord.from_json(current[0]).released_at > 0


def _race(n: int, fn) -> list:
    """Runs fn(i) in n threads released together; returns each result or exception."""
    barrier, results = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


# ---- the backends' conditional writes ------------------------------------------------------------


def test_conditional_writes(target):
    store = target.store
    v1 = store.create_if_absent("_leases/x/a.json", b"one")
    assert v1 and store.create_if_absent("_leases/x/a.json", b"two") is None
    assert store.read_versioned("_leases/x/a.json") == (b"one", v1)
    assert store.replace_if_version("_leases/x/a.json", b"three", "0" if target.kind == "gcs" else "stale") is None
    v2 = store.replace_if_version("_leases/x/a.json", b"two", v1)
    assert v2 and v2 != v1 and store.read_bytes("_leases/x/a.json") == b"two"
    assert store.replace_if_version("_leases/x/a.json", b"four", v1) is None  # v1 is gone: a taker that read it loses
    store.delete("_leases/x/a.json")
    assert store.replace_if_version("_leases/x/a.json", b"five", v2) is None  # gone: nothing to replace


# ---- the lease -----------------------------------------------------------------------------------


def test_runs_started_at_once_exactly_one_gets_the_lease(target):
    results = _race(6, lambda i: acquire(target.store, "segments_npz", CHANNEL, f"run-{i}"))
    (winner,) = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(losers) == 5 and all(isinstance(e, LeaseHeld) for e in losers), losers
    for exc in losers:
        assert str(exc).startswith(
            f"segments_npz for channel {CHANNEL!r} is already being materialized by run {winner.record.run_id} "
        )
        assert f"pid {os.getpid()}" in str(exc) and "stopped before writing anything" in str(exc)
    with winner:
        pass
    assert _released(target.store, "segments_npz")
    nxt = acquire(target.store, "segments_npz", CHANNEL, "next-run")  # free for the next run, which is no take-over
    assert not nxt.taken_over_from
    nxt.release()


_HOLDER = """
import sys, time
kind, where, bucket = sys.argv[1:4]
if kind == "local":
    from neutts_assets.storage.local import LocalStore
    store = LocalStore(where)
elif kind == "s3":
    import boto3
    from neutts_assets.storage.s3 import S3Store
    store = S3Store(boto3.client("s3", endpoint_url=where, aws_access_key_id=sys.argv[4], aws_secret_access_key=sys.argv[5],
                                 region_name="us-east-1"), bucket, "segs")
else:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from neutts_assets.storage.gcs import GCSStore
    store = GCSStore(storage.Client(project="test", credentials=AnonymousCredentials()), bucket, "segs")
from neutts_assets.pipeline.orchestration.lease import acquire
acquire(store, "segments_npz", sys.argv[6], "run-killed-by-sigkill").__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_lease_of_a_sigkilled_run_is_taken_over_at_once(target, source):
    where = target.endpoint if target.kind == "s3" else target.url
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, target.kind, where, target.bucket or "", S3_ACCESS, S3_SECRET, CHANNEL],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="run-killed-by-sigkill"):  # alive: held
            acquire(target.store, "segments_npz", CHANNEL, "too-early")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    stale = LeaseRecord.from_json(target.store.read_bytes(lease_key("segments_npz", CHANNEL)))
    assert stale.pid == proc.pid and stale.expires_at > time.time() + 60  # not expired: the dead pid is the reason

    # The restart takes it over at once and runs, through Dagster, saying so in its metadata.
    resources = make_resources(str(source), target.url, target.endpoint)
    result = run_stage1(DagsterInstance.ephemeral(), resources, CHANNEL)
    taken = asset_metadata(result, "segments_npz")["lease_taken_over_from_segments_npz"]
    assert taken == f"run run-killed-by-sigkill (its process {proc.pid} on this host is gone)"
    assert _released(target.store, "segments_npz")


def test_expired_lease_from_another_host_is_taken_over_by_one_taker(target):
    key = lease_key("hf_dataset", CHANNEL)
    now = time.time()
    other = LeaseRecord(
        asset="hf_dataset",
        channel=CHANNEL,
        run_id="run-on-t4-2",
        host="t4-2",
        boot_id="b",
        pid=1,
        pid_started="",
        acquired_at=now - 50,
        heartbeat_at=now - 5,
        expires_at=now + 60,
        nonce="n",
    )
    target.store.write_bytes(key, other.to_json())
    with pytest.raises(
        LeaseHeld, match=r"run run-on-t4-2 \(host t4-2, pid 1,"
    ):  # live elsewhere: its pid means nothing here
        acquire(target.store, "hf_dataset", CHANNEL, "mine")

    other.heartbeat_at, other.expires_at = now - 200, now - 80  # that machine died 3 minutes ago
    target.store.write_bytes(key, other.to_json())
    results = _race(4, lambda i: acquire(target.store, "hf_dataset", CHANNEL, f"taker-{i}"))
    (winner,) = [r for r in results if not isinstance(r, Exception)]
    assert all(isinstance(r, LeaseHeld) and winner.record.run_id in str(r) for r in results if r is not winner), results
    assert winner.taken_over_from["run_id"] == "run-on-t4-2" and "heartbeat expired" in winner.taken_over_from["reason"]
    winner.release()


def test_heartbeat_renews_and_a_holder_that_was_taken_over_knows_it(target):
    lease = acquire(target.store, "encoded_segments", CHANNEL, "slow-run", ttl_s=1.2)  # renewed every 0.2 s
    with lease:
        first = lease.record.expires_at
        time.sleep(1.5)  # past the first expiry: only the renewals keep it
        assert lease.record.expires_at > first and not lease.lost
        with pytest.raises(LeaseHeld, match="slow-run"):
            acquire(target.store, "encoded_segments", CHANNEL, "other")
    assert _released(target.store, "encoded_segments")

    # A holder that stalled past its expiry was taken over: it must not release the new holder's lease,
    # and leaving its block says it lost.
    stalled = acquire(target.store, "encoded_segments", CHANNEL, "stalled-run", ttl_s=0.5)
    time.sleep(0.7)
    taker = acquire(target.store, "encoded_segments", CHANNEL, "taker")
    assert taker.taken_over_from["run_id"] == "stalled-run"
    with pytest.raises(LeaseLost, match="stalled-run lost its lease"):
        with stalled:
            time.sleep(0.3)  # its next renewal finds the lease replaced
            # The heartbeat found it, not the release on leaving (which would say "before its release").
            assert stalled.lost == "the lease is now held by taker"
            with pytest.raises(LeaseLost, match="held by taker"):
                stalled.check()
    assert LeaseRecord.from_json(target.store.read_bytes(lease_key("encoded_segments", CHANNEL))).run_id == "taker"
    taker.release()


def test_a_failed_run_releases_its_lease(target):
    with pytest.raises(ValueError):
        with acquire(target.store, "segments_npz", CHANNEL, "failing"):
            raise ValueError("a bad recording")
    assert _released(target.store, "segments_npz")


# ---- two runs of segments_npz for one channel, through Dagster -----------------------------------


def _stage1_state(store: ObjectStore) -> dict:
    """Keys and decoded contents of a channel's stage-1 output (npz archives carry write times)."""
    state = {}
    for o in store.list(channel_prefix(CHANNEL)):
        data = store.read_bytes(o.key)
        if o.key.endswith(".npz"):
            seg = read_segment(data)
            state[o.key] = (seg.pcm16.tobytes(), seg.text, seg.speaker_id, seg.duration_sec)
        else:
            index = json.loads(data)
            state[o.key] = (index["status"], [s["key"] for s in index["segments"]])
    return state


def test_two_segments_npz_runs_at_once(target, source, single_run):
    resources = make_resources(str(source), target.url, target.endpoint)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("channels", [CHANNEL])
    materialize([raw_audio], partition_key=CHANNEL, instance=instance, resources=resources)
    results = {}

    def run(name):
        results[name] = materialize(
            [raw_audio, segments_npz],
            selection=[segments_npz],
            partition_key=CHANNEL,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            tags={"which": name},
            run_config={"ops": {"segments_npz": {"config": {"workers": 1}}}},
        )

    first = threading.Thread(target=run, args=("first",))
    first.start()
    key = lease_key("segments_npz", CHANNEL)
    deadline = time.monotonic() + 60
    while target.store.read_versioned(key) is None:  # the first run holds the lease: start the second now
        assert time.monotonic() < deadline and first.is_alive(), "the first run never took the lease"
        time.sleep(0.01)
    run("second")
    second_done = time.time()
    first.join(120)

    assert results["first"].success, results["first"].all_events
    second = results["second"]
    assert not second.success
    (failure,) = [e for e in second.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    holder = results["first"].run_id
    assert f"segments_npz for channel {CHANNEL!r} is already being materialized by run {holder} " in message
    assert "This run stopped before writing anything" in message
    assert failure.step_failure_data.user_failure_data.metadata["holding_run"].value == holder
    first_end = instance.get_run_stats(holder).end_time
    print(f"overlap margin {first_end - second_done:.2f} s")
    assert first_end > second_done  # they did overlap
    # The store is what one run alone leaves, and the lease is gone.
    assert _stage1_state(target.store) == _stage1_state(single_run)
    assert len([k for k in _stage1_state(target.store) if k.endswith(".npz")]) == 150
    assert _released(target.store, "segments_npz")


# ---- two channels publish the dataset card at the same moment ------------------------------------


def test_two_channels_publishing_at_once_both_stay_on_the_card(target, single_run, tmp_path):
    # Build two channels' shards from the same stage-1 segments (copied into this store).
    for o in single_run.list(channel_prefix(CHANNEL)):
        if o.key.endswith(".npz") and "sonnet001_copy0_" in o.key:
            target.store.write_bytes(o.key, single_run.read_bytes(o.key))
    objects = list(segment_objects(target.store, channel_prefix(CHANNEL)).values())
    records = {}
    for channel in ("chan_a", "chan_b"):
        (tmp_path / channel).mkdir()
        records[channel] = build_channel(
            target.store, channel, objects, RowFilter(require_codes=False), tmp_path / channel, source="test"
        ).record
    lost = 0
    for _round in range(8):
        for channel in records:  # each round starts from a store with neither channel published
            target.store.delete(record_key(channel))
        target.store.delete(CARD_KEY)
        _race(2, lambda i: publish_channel(target.store, records[["chan_a", "chan_b"][i]], "T"))
        card = yaml.safe_load(target.store.read_bytes(CARD_KEY).decode().split("---")[1])
        configs = {c["config_name"] for c in card["configs"]}
        lost += configs != {"all", "text_codes", "chan_a", "chan_b"}
    assert lost == 0, f"{lost} of 8 rounds left a channel off the card"
    for channel, record in records.items():  # and neither publish deleted the other's shards
        assert sorted(o.key for o in target.store.list(shard_prefix(channel))) == sorted(
            f"hf_dataset/{s['path']}" for s in record["shards"]
        )


# ---- clean-up of orphan temporaries beside live writers ------------------------------------------


def test_orphan_clean_up_spares_live_writers_of_this_and_other_hosts(tmp_path):
    from neutts_assets.storage.local import _temp_prefix

    store = LocalStore(tmp_path / "store")
    folder = tmp_path / "store" / "stage1" / "other_channel"
    folder.mkdir(parents=True)
    live = subprocess.Popen(["sleep", "60"])  # another run on this host, mid-write
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        mine = _temp_prefix(folder / "a.npz")
        host_tag, pid = mine.split(".neutts-tmp-")[1].rstrip("-").split(".")
        assert pid == str(os.getpid())
        names = {
            "live": f".a.npz.neutts-tmp-{host_tag}.{live.pid}-x",
            "dead": f".b.npz.neutts-tmp-{host_tag}.{dead.pid}-x",
            # another machine writing into a shared folder: its pid means nothing here
            "other_host_fresh": f".c.npz.neutts-tmp-0badc0de.{dead.pid}-x",
            "other_host_old": f".d.npz.neutts-tmp-0badc0de.{dead.pid}-x",
        }
        for name in names.values():
            (folder / name).write_bytes(b"part")
        two_days_ago = time.time() - 2 * 86400
        os.utime(folder / names["other_host_old"], (two_days_ago, two_days_ago))
        assert store.remove_orphan_temporaries() == 2
        assert sorted(p.name for p in folder.iterdir()) == sorted([names["live"], names["other_host_fresh"]])
        # and a write in progress in this process names this host and pid
        store.write_bytes("stage1/other_channel/e.npz", b"whole")
        assert (folder / "e.npz").read_bytes() == b"whole"
    finally:
        live.kill()
        live.wait()


def test_two_hf_dataset_runs_of_one_channel_leave_one_shard_set(single_run, source, s3_client, s3_bucket, s3_endpoint):
    """Two builds of one channel would each publish their own shard names and delete the other's;
    the second run stops at the lease, so the channel has exactly the shards its card lists."""
    from neutts_assets.defs.dataset.hf_dataset import hf_dataset

    store = S3Store(s3_client, s3_bucket, "segs")  # a build reading over HTTP: time for the second run to arrive
    for o in single_run.list(""):
        store.write_bytes(o.key, single_run.read_bytes(o.key))
    resources = make_resources(str(source), f"s3://{s3_bucket}/segs", s3_endpoint)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("channels", [CHANNEL])
    config = {
        "ops": {
            "hf_dataset": {
                "config": {
                    "include_segments_without_codes": True,
                    "workers": 1,
                    "shard_size_mb": 0.05,
                    "save_to_disk": True,
                }
            }
        }
    }
    results = {}

    def run(name):
        results[name] = materialize(
            [hf_dataset],
            partition_key=CHANNEL,
            instance=instance,
            resources=resources,
            run_config=config,
            raise_on_error=False,
        )

    first = threading.Thread(target=run, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    while store.read_versioned(lease_key("hf_dataset", CHANNEL)) is None:
        assert time.monotonic() < deadline and first.is_alive(), "the first run never took the lease"
        time.sleep(0.01)
    run("second")
    second_done = time.time()
    first.join(120)
    assert results["first"].success and not results["second"].success
    print(f"overlap margin {instance.get_run_stats(results['first'].run_id).end_time - second_done:.2f} s")
    assert instance.get_run_stats(results["first"].run_id).end_time > second_done  # they did overlap
    (failure,) = [e for e in results["second"].all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert (
        f"hf_dataset for channel {CHANNEL!r} is already being materialized by run {results['first'].run_id} " in message
    )

    record = json.loads(store.read_bytes(record_key(CHANNEL)))
    card = yaml.safe_load(store.read_bytes(CARD_KEY).decode().split("---")[1])
    (listed,) = [c["data_files"][0]["path"] for c in card["configs"] if c["config_name"] == CHANNEL]
    on_disk = sorted(o.key[len("hf_dataset/") :] for o in store.list(shard_prefix(CHANNEL)))
    assert on_disk == sorted(listed) == sorted(s["path"] for s in record["shards"]) and len(on_disk) > 1
    assert record["stats"]["rows"] == 150


# ---- a holder whose lease may be gone stops writing; its own writes never make it a stranger ------


class _FlakyLocalStore(LocalStore):
    """A local store whose next conditional replace can be made to misbehave once, as a retrying
    client does: "landed" writes and then raises (its retries ran out after the write happened),
    "refused" raises without writing; "block" makes every replace wait until `unblock` is set."""

    def __init__(self, root):
        super().__init__(root)
        self.next_replace: str | None = None
        self.blocked, self.waiting, self.unblock = threading.Event(), threading.Event(), threading.Event()

    def replace_if_version(self, key, data, version):
        if self.blocked.is_set():
            self.waiting.set()
            self.unblock.wait(30)
        mode, self.next_replace = self.next_replace, None
        if mode == "refused":
            raise StoreError(f"cannot write {key!r}: connection reset (nothing written)")
        version = super().replace_if_version(key, data, version)
        if mode == "landed":
            raise StoreError(f"cannot write {key!r}: read timeout, retries exhausted (the write landed)")
        return version


def test_check_stops_a_holder_whose_renewals_cannot_land(tmp_path):
    store = _FlakyLocalStore(tmp_path / "store")
    with pytest.raises(LeaseLost, match="blocked-run lost its lease: it was last renewed"):
        with acquire(store, "hf_dataset", CHANNEL, "blocked-run", ttl_s=1.2) as lease:  # renewed every 0.2 s
            time.sleep(0.5)
            lease.check()  # renewed: fine
            store.blocked.set()  # the next renewal hangs, as one on a stalled store does
            assert store.waiting.wait(5)
            last = lease.record.expires_at
            time.sleep(max(0.0, last - 1.2 / 4 - time.time()) + 0.05)
            assert not lease.lost and lease.record.expires_at == last  # the heartbeat has not noticed anything
            try:
                lease.check()  # but the holder's clock says another run may take it over any moment now
            finally:
                store.unblock.set()
    assert _released(store, "hf_dataset")  # released once the store answered again: nobody took it over


def test_a_renewal_or_release_whose_write_landed_but_raised_keeps_the_lease(tmp_path):
    store = _FlakyLocalStore(tmp_path / "store")
    lease = acquire(store, "segments_npz", CHANNEL, "my-run", ttl_s=60)
    store.next_replace = "landed"
    with pytest.raises(StoreError):
        lease.renew()  # the renewal is in the store; the lease still holds the version before it
    assert lease.renew() and not lease.lost  # its own record, adopted: not "held by my-run"
    lease.check()
    store.next_replace = "landed"
    with pytest.raises(StoreError):
        lease.renew()
    lease.release()  # against the version its last (unseen) renewal left
    assert not lease.lost and _released(store, "segments_npz")

    again = acquire(store, "segments_npz", CHANNEL, "next-run", ttl_s=60)
    assert not again.taken_over_from  # released, not taken over
    store.next_replace = "refused"
    again.release()  # the first release write fails outright: written again
    assert _released(store, "segments_npz") and not again.lost
    third = acquire(store, "segments_npz", CHANNEL, "third-run", ttl_s=60)
    store.next_replace = "landed"
    third.release()  # landed and raised: read back as its own release, done
    assert _released(store, "segments_npz") and not third.lost


def test_the_lease_client_gives_up_within_a_third_of_the_ttl(s3_endpoint):
    from neutts_assets.defs.leases import LEASE_CLIENT_SETTINGS
    from neutts_assets.defs.resources import SegmentStore
    from neutts_assets.pipeline.orchestration.lease import DEFAULT_TTL_S

    data = SegmentStore(
        url="s3://b/p", endpoint_url=s3_endpoint, access_key=S3_ACCESS, secret_key=S3_SECRET, region="us-east-1"
    )
    store = data.model_copy(update=LEASE_CLIENT_SETTINGS).open()
    s, config = store.settings, store.client.meta.config
    assert (config.retries["total_max_attempts"], config.connect_timeout, config.read_timeout) == (
        s.max_attempts,
        s.connect_timeout_s,
        s.read_timeout_s,
    )
    # Every try waits at most connect + read timeout, and botocore backs off at most 2**retry s between tries.
    worst = s.max_attempts * (s.connect_timeout_s + s.read_timeout_s) + sum(
        min(20, 2**i) for i in range(1, s.max_attempts)
    )
    assert worst <= DEFAULT_TTL_S / 3 and s.deadline_s <= DEFAULT_TTL_S / 3, worst
    assert data.open().settings.max_attempts == 10  # the data's own client is left as it was


def test_a_run_that_loses_its_lease_publishes_no_further_recording(tmp_path, source, monkeypatch):
    """A run taken over mid-way (it stalled past its expiry) stops at its next index write: the
    recordings not indexed yet are the new holder's to write."""
    import neutts_assets.defs.leases as leases

    def short(*a, **kw):  # renewed every 0.2 s: the loss is seen at once
        return acquire(*a, **{**kw, "ttl_s": 1.2})

    monkeypatch.setattr(leases, "acquire", short)
    store = LocalStore(tmp_path / "store")
    key = lease_key("segments_npz", CHANNEL)

    def indexes() -> int:
        return sum("_index" in o.key for o in store.list(channel_prefix(CHANNEL)))

    seen = {}

    def take_over():  # once the first recording is indexed, another run takes the lease
        deadline = time.monotonic() + 120
        while indexes() == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        now = time.time()
        taker = LeaseRecord(
            asset="segments_npz",
            channel=CHANNEL,
            run_id="taker",
            host="elsewhere",
            boot_id="b",
            pid=1,
            pid_started="",
            acquired_at=now,
            heartbeat_at=now,
            expires_at=now + 600,
            nonce="t",
        )
        store.write_bytes(key, taker.to_json())
        seen["indexes"] = indexes()

    thread = threading.Thread(target=take_over)
    thread.start()
    result = run_stage1(
        DagsterInstance.ephemeral(),
        make_resources(str(source), str(tmp_path / "store")),
        CHANNEL,
        config={"workers": 1},
        raise_on_error=False,
    )
    thread.join()
    print(f"indexes at the take-over {seen['indexes']}, at the end {indexes()} of {len(COPIES)}")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "lost its lease: the lease is now held by taker" in failure.step_failure_data.error.to_string()
    # Only what was cut while the loss went unseen (one renewal, 0.2 s; each recording takes longer):
    # without the check before each index write the run indexes all ten.
    assert 1 <= seen["indexes"] <= indexes() <= seen["indexes"] + 2 < len(COPIES), (seen, indexes())
    assert LeaseRecord.from_json(store.read_bytes(key)).run_id == "taker"  # and it left the new holder's lease alone


def test_publishing_steps_ask_the_lease_first(tmp_path):
    from neutts_assets.pipeline.dataset.store import progress_key
    from neutts_assets.pipeline.dataset.writer import finish_publishing

    store = LocalStore(tmp_path / "store")
    record = {"channel": "chan_a", "build_id": "b1", "shards": [], "stats": {}}
    store.write_bytes(progress_key("chan_a"), b"{}")
    store.write_bytes("hf_dataset/data/chan_a/old-shard.parquet", b"x")

    def lost():
        raise LeaseLost("lost")

    with pytest.raises(LeaseLost):
        publish_channel(store, record, "T", guard=lost)
    with pytest.raises(LeaseLost):
        finish_publishing(store, record, "T", guard=lost)
    assert sorted(o.key for o in store.list("")) == sorted(
        [progress_key("chan_a"), "hf_dataset/data/chan_a/old-shard.parquet"]
    )


def test_read_versioned_retries_a_connection_reset_mid_response(s3_endpoint, s3_client, s3_bucket):
    """A lease read whose body (or whose 404's body) is cut off is read again, not a raw botocore
    or urllib3 error escaping the store."""
    from neutts_assets.defs.resources import SegmentStore
    from neutts_assets_tests.fault_proxy import FaultProxy

    direct = S3Store(s3_client, s3_bucket, "segs")
    version = direct.create_if_absent("_leases/x/a.json", b"a lease record, long enough to be cut in half")
    with FaultProxy(s3_endpoint, "s3", faults=("reset",), seed=0) as proxy:
        store = SegmentStore(
            url=f"s3://{s3_bucket}/segs",
            endpoint_url=proxy.url,
            access_key=S3_ACCESS,
            secret_key=S3_SECRET,
            region="us-east-1",
            max_attempts=10,
            read_timeout_s=2.0,
            initial_backoff_s=0.01,
            max_backoff_s=0.05,
        ).open()
        proxy.enabled = True  # the first requests are reset: the floor serves the fault first
        for _ in range(6):
            assert store.read_versioned("_leases/x/a.json") == (
                b"a lease record, long enough to be cut in half",
                version,
            )
            assert store.read_versioned("_leases/x/missing.json") is None
    assert proxy.counts["reset_mid_body"] >= 2, proxy.counts
    retries = store.retries
    assert sum(n for what, n in retries.items() if what.startswith("GetObject body")) >= 2, retries


def test_gcs_conditional_writes_and_reads_retry_through_the_stores_own_retry(gcs_endpoint, gcs_bucket, monkeypatch):
    """The lease's GCS calls go through the store's Retry and timeouts (counted), like every other
    call: a reset mid-response is tried again and answered right."""
    from neutts_assets.defs.resources import SegmentStore
    from neutts_assets_tests.fault_proxy import FaultProxy

    with FaultProxy(gcs_endpoint, "gcs", faults=("reset",), seed=0) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        store = SegmentStore(
            url=f"gs://{gcs_bucket}/segs",
            max_attempts=10,
            read_timeout_s=2.0,
            initial_backoff_s=0.01,
            max_backoff_s=0.05,
        ).open()
        proxy.enabled = True
        record = b"a lease record, long enough to be cut in half"
        for i in range(4):
            key = f"_leases/x/{i}.json"
            # A retried write whose first attempt landed answers None: the lease reads back whose it is.
            version = store.create_if_absent(key, record)
            data, read_version = store.read_versioned(key)
            assert data == record and version in (None, read_version)
            assert store.read_versioned(f"_leases/x/missing-{i}.json") is None
            store.replace_if_version(key, b"renewed", read_version)
            assert store.read_versioned(key)[0] == b"renewed"
    assert proxy.counts["reset"] >= 2, proxy.counts
    assert sum(store.retries.values()) >= 2, (store.retries, proxy.counts)
