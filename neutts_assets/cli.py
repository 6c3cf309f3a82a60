"""`neutts-assets`: the command-line side of the code location.

    neutts-assets check-stores [--write]   the old test_connection(), for every configured store
    neutts-assets add-channel NAME...      add channel partitions to the Dagster instance
    neutts-assets demo [--save-to-disk] [--verbose]
                                           add the demo channel and materialize the whole graph
                                           (the demo always writes the load_from_disk copy)
    neutts-assets materialize CHANNEL [--save-to-disk] [--verbose]
                                           one line per asset as it runs, then a summary table
                                           (--verbose: Dagster's whole event log instead)
    neutts-assets save-to-disk [CHANNEL ...]
                                           (re)write the load_from_disk copy (hf_dataset_disk/) of the
                                           channels' published datasets, straight from the store (no
                                           Dagster run); no channel: every channel with a published
                                           build. Prints the folders to hand to datasets.load_from_disk.
    neutts-assets explain ROW_ID [--json]  a published row's lineage (source audio and version,
                                           transcript and SHA-256, start/end, cut rules, codec,
                                           build), split and scores; ROW_ID is CHANNEL/AUDIO_ID

Configuration comes from the same environment variables as the code location (README).
"""

from __future__ import annotations

import argparse
import os
import sys


def check_stores(write: bool) -> int:
    from neutts_assets.defs.resources import resources_from_env
    from neutts_assets.storage.store import StoreCheckError

    failed = 0
    resources = resources_from_env()
    for name in ("source", "store"):
        try:
            # Resolves EnvVar fields the way a run would, outside of a run.
            store = resources[name].process_config_and_initialize().open()
            where = store.describe()
            # The source is read only: never write a probe into the broadcaster's bucket.
            store.check(write=write and name == "store")
            print(f"{name}: OK   {where}")
        except StoreCheckError as exc:
            failed += 1
            print(f"{name}: FAILED {exc}  [{resources[name].url}]")
        except Exception as exc:  # a misconfiguration (bad URL); messages never include secrets
            failed += 1
            print(f"{name}: FAILED {type(exc).__name__}: {exc}  [{resources[name].url}]")
    return 1 if failed else 0


def add_channels(names: list[str]) -> int:
    from dagster import DagsterInstance

    from neutts_assets.defs.partitions import channels
    from neutts_assets.pipeline.inventory.source_layout import UnsafeNameError, check_channel_name

    try:
        for name in names:  # all or nothing: no channel is added when one name is refused
            check_channel_name(name)
    except UnsafeNameError as exc:
        print(f"error: {exc}; no channel added", file=sys.stderr)
        return 2
    with DagsterInstance.get() as instance:
        existing = set(instance.get_dynamic_partitions(channels.name))
        new = [n for n in names if n not in existing]
        if new:
            instance.add_dynamic_partitions(channels.name, new)
        print(f"channels added: {new or 'none'}; already present: {sorted(set(names) - set(new)) or 'none'}")
    return 0


def executable_assets() -> list[str]:
    from neutts_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    return sorted(k.to_user_string() for k in graph.executable_asset_keys)


def materialize(channel: str, save_to_disk: bool = False, verbose: bool = False) -> int:
    """Every built asset for the channel in one run (the job `dagster asset materialize --select` runs),
    with the run console (neutts_assets/console.py) or, with `verbose`, Dagster's whole event log."""
    from neutts_assets.console import materialize_assets

    assets = executable_assets()
    dataset_config = {}
    if "hf_dataset" in assets and "encoded_segments" not in assets:
        # No encoder in this graph yet, so no codes: build the dataset with the old "no codes, for testing" option.
        dataset_config["include_segments_without_codes"] = True
    if "hf_dataset" in assets and save_to_disk:
        dataset_config["save_to_disk"] = True  # also the load_from_disk copy under hf_dataset_disk/
    run_config = {"ops": {"hf_dataset": {"config": dataset_config}}} if dataset_config else None
    rc = materialize_assets(channel, assets, run_config, verbose=verbose)
    if rc == 0:
        print(
            f"\nchannel {channel!r} materialized; see it in the UI: "
            f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '<your DAGSTER_HOME>')} dagster dev"
        )
        print_dataset_paths([channel])
    return rc


def _open_store():
    from neutts_assets.defs.resources import resources_from_env

    resource = resources_from_env()["store"]
    store = resource.process_config_and_initialize().open()
    root = getattr(store, "root", None)  # a local folder: its absolute path; else the store's URL
    return store, str(root) if root is not None else str(resource.url).rstrip("/")


def _where(base: str, *parts: str) -> str:
    return "/".join([base, *parts]) if "://" in base else os.path.join(base, *parts)


def print_dataset_paths(channels: list[str]) -> None:
    """The last lines of a run: the folders to hand to the users' scripts, those that exist."""
    from neutts_assets.pipeline.dataset.disk import STATE
    from neutts_assets.pipeline.dataset.store import CARD_KEY, DATASET_PREFIX, DISK_PREFIX
    from neutts_assets.pipeline.pairs.store import folder as pairs_folder

    store, base = _open_store()
    print(f"segment store: {base}")
    if store.exists(CARD_KEY):
        print(
            f"dataset folder (datasets.load_dataset(folder, 'all' or CHANNEL, split='train')): {_where(base, DATASET_PREFIX.rstrip('/'))}"
        )
    if store.exists(DISK_PREFIX + STATE):
        print(f"load_from_disk, all channels: {_where(base, DISK_PREFIX.rstrip('/'))}")
    for channel in channels:
        if store.exists(f"{DISK_PREFIX}{channel}/{STATE}"):
            print(f"load_from_disk, channel {channel}: {_where(base, DISK_PREFIX.rstrip('/'), channel)}")
        if next(iter(store.list(pairs_folder(channel))), None) is not None:
            print(
                f"training pairs (load_from_disk), channel {channel}: {_where(base, pairs_folder(channel).rstrip('/'))}"
            )


def save_to_disk(names: list[str], force: bool = False) -> int:
    """Writes the load_from_disk copy of the channels' published builds, from the store alone,
    holding each channel's hf_dataset lease (as a run of the asset would) while it writes."""
    import tempfile
    import uuid
    from pathlib import Path

    from neutts_assets.pipeline.dataset.disk import disk_copy_current, publish_all_channels, save_channel_to_disk
    from neutts_assets.pipeline.dataset.store import DISK_PREFIX
    from neutts_assets.pipeline.dataset.writer import read_record, read_records
    from neutts_assets.pipeline.orchestration.lease import LeaseHeld, acquire

    store, base = _open_store()
    channels = names or sorted(read_records(store))
    if not channels:
        print(
            "error: no channel has a published hf_dataset build in this store: materialize hf_dataset first",
            file=sys.stderr,
        )
        return 1
    failed, done_channels = 0, []
    for channel in channels:
        record = read_record(store, channel)
        if record is None:
            print(
                f"error: channel {channel!r} has no published hf_dataset build: materialize hf_dataset for it first",
                file=sys.stderr,
            )
            failed += 1
            continue
        try:
            with acquire(store, "hf_dataset", channel, f"cli-save-to-disk-{uuid.uuid4().hex[:8]}") as lease:
                record = read_record(store, channel)  # the published build now that nothing else writes it
                if not force and disk_copy_current(store, record):
                    publish_all_channels(store)
                    print(
                        f"{channel}: the copy is current ({len(record['shards'])} shard(s), build {record['build_id']})"
                    )
                else:
                    with tempfile.TemporaryDirectory(prefix="neutts-save-to-disk-") as tmp:
                        lease.check()
                        done = save_channel_to_disk(store, record, Path(tmp), rewrite=force)
                    print(
                        f"{channel}: {done['arrow_files']} Arrow file(s), {done['converted']} converted, {done['kept']} kept, "
                        f"{done['removed']} removed (build {record['build_id']}, {record['stats']['rows']} rows)"
                    )
            done_channels.append(channel)
        except LeaseHeld as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    if done_channels:
        print("datasets.load_from_disk(...) folders:")
        print(f"all channels: {_where(base, DISK_PREFIX.rstrip('/'))}")
        for channel in done_channels:
            print(f"channel {channel}: {_where(base, DISK_PREFIX.rstrip('/'), channel)}")
    return 1 if failed else 0


def explain_row(row_id: str, as_json: bool) -> int:
    import json

    from neutts_assets.pipeline.dataset.explain import RowNotFound, explain, render

    store, _ = _open_store()
    try:
        doc = explain(store, row_id)
    except RowNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, ensure_ascii=False, indent=2) if as_json else render(doc))
    return 0


def choose_demo_codec() -> None:
    """The demo runs the whole graph in one command: where the pretrained NeuCodec weights cannot be
    had, it says so before encoding and uses the random-weight codec (test-only codes) instead.
    An explicit NEUTTS_CODEC is always obeyed; production never falls back on its own."""
    from neutts_assets import settings as S

    weights, home = S.CODEC_WEIGHTS.env, S.HF_HOME.env
    choice = S.CODEC_WEIGHTS.raw()
    if choice:
        print(f"codec: {weights}={choice}", flush=True)
        return
    from neutts_assets.pipeline.encoding.codec import pretrained_reachable

    model = S.CODEC_MODEL.read()
    ok, why = pretrained_reachable(model)
    if ok:
        print(f"codec: pretrained {model} (Hugging Face Hub or {home} cache)", flush=True)
        return
    print(
        f"\nNOTE: the pretrained NeuCodec weights ({model}) cannot be loaded: the Hugging Face Hub cannot be reached "
        f"and the {home} cache does not hold them ({why}).\n"
        f"The demo encodes with the random-weight codec instead: the documented switch {weights}=random "
        f"(the real NeuCodec architecture with random weights). Its codes are TEST-ONLY and labelled so in the "
        f"metadata. Set {weights}=pretrained to require the real weights, with {home} pointing at a cache "
        f"that holds them.\n",
        flush=True,
    )
    os.environ[weights] = "random"


VERBOSE_HELP = "show Dagster's whole event log (DEBUG events, the libraries' output) instead of one line per asset"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="neutts-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-stores", help="check that the source bucket and the segment store are reachable")
    p.add_argument("--write", action="store_true", help="also write and delete a probe object in the segment store")
    p = sub.add_parser("add-channel", help="add channel partitions to the Dagster instance ($DAGSTER_HOME)")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("materialize", help="add a channel and materialize every built asset for it")
    p.add_argument("channel")
    p.add_argument(
        "--save-to-disk", action="store_true", help="hf_dataset also writes the load_from_disk copy (hf_dataset_disk/)"
    )
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p = sub.add_parser("demo", help="add the shipped demo channel and materialize every built asset for it")
    p.add_argument(
        "--save-to-disk", action="store_true", help="the load_from_disk copy (written by the demo in any case)"
    )
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    p = sub.add_parser(
        "save-to-disk", help="(re)write the load_from_disk copy of channels' published datasets, from the store"
    )
    p.add_argument("channels", nargs="*", help="channels (default: every channel with a published build)")
    p.add_argument(
        "--force", action="store_true", help="convert every shard again, even those whose Arrow file is there"
    )
    p = sub.add_parser("explain", help="a published dataset row's lineage, split and quality scores")
    p.add_argument("row_id", help="CHANNEL/AUDIO_ID (an AUDIO_ID alone is looked for in every channel)")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    args = parser.parse_args(argv)

    if args.command == "check-stores":
        return check_stores(args.write)
    if args.command == "add-channel":
        return add_channels(args.names)
    if args.command in ("materialize", "demo"):
        from neutts_assets.demo import DEMO_CHANNEL

        channel = DEMO_CHANNEL if args.command == "demo" else args.channel
        if args.command == "demo":
            choose_demo_codec()
        # The demo ends with the folders the users' scripts open, the load_from_disk copy among them.
        return add_channels([channel]) or materialize(
            channel, save_to_disk=args.save_to_disk or args.command == "demo", verbose=args.verbose
        )
    if args.command == "save-to-disk":
        return save_to_disk(args.channels, args.force)
    if args.command == "explain":
        return explain_row(args.row_id, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
