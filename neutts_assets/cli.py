"""`neutts-assets`: the command-line side of the code location.

    neutts-assets check-stores [--write]   the old test_connection(), for every configured store
    neutts-assets add-channel NAME...      add channel partitions to the Dagster instance
    neutts-assets demo                     add the demo channel and materialize the whole graph

Configuration comes from the same environment variables as the code location (README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

    from neutts_assets.core.layout import UnsafeNameError, check_name
    from neutts_assets.defs.partitions import channels

    try:
        for name in names:
            check_name(name, "channel")
    except UnsafeNameError as exc:
        print(f"error: {exc}", file=sys.stderr)
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


def materialize(channel: str) -> int:
    assets = executable_assets()
    cmd = [
        sys.executable, "-m", "dagster", "asset", "materialize",
        "-m", "neutts_assets.definitions",
        "--select", ",".join(assets),
        "--partition", channel,
    ]
    if "hf_dataset" in assets and "encoded_segments" not in assets:
        # No encoder in this graph yet, so no codes: build the dataset with the old "no codes, for testing" option.
        cmd += ["--config-json", json.dumps({"ops": {"hf_dataset": {"config": {"include_segments_without_codes": True}}}})]
    print("$ " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    if rc == 0:
        from neutts_assets.defs.resources import resources_from_env

        store = resources_from_env()["store"].url
        print(f"\nchannel {channel!r} materialized; segment store: {store}\n"
              f"dataset: datasets.load_dataset({str(store) + '/hf_dataset'!r}, {channel!r})\n"
              f"see it in the UI: DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '<your DAGSTER_HOME>')} dagster dev")
    return rc


def choose_demo_codec() -> None:
    """The demo runs the whole graph in one command: where the pretrained NeuCodec weights cannot be
    had, it says so before encoding and uses the random-weight codec (test-only codes) instead.
    An explicit NEUTTS_CODEC is always obeyed; production never falls back on its own."""
    choice = os.environ.get("NEUTTS_CODEC")
    if choice:
        print(f"codec: NEUTTS_CODEC={choice}", flush=True)
        return
    from neutts_assets.core.codec import pretrained_reachable

    model = os.environ.get("NEUTTS_CODEC_MODEL") or "neuphonic/neucodec"
    ok, why = pretrained_reachable(model)
    if ok:
        print(f"codec: pretrained {model} (Hugging Face Hub or HF_HOME cache)", flush=True)
        return
    print(
        f"\nNOTE: the pretrained NeuCodec weights ({model}) cannot be loaded: the Hugging Face Hub cannot be reached "
        f"and the HF_HOME cache does not hold them ({why}).\n"
        f"The demo encodes with the random-weight codec instead: the documented switch NEUTTS_CODEC=random "
        f"(the real NeuCodec architecture with random weights). Its codes are TEST-ONLY and labelled so in the "
        f"metadata. Set NEUTTS_CODEC=pretrained to require the real weights, with HF_HOME pointing at a cache "
        f"that holds them.\n",
        flush=True,
    )
    os.environ["NEUTTS_CODEC"] = "random"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neutts-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-stores", help="check that the source bucket and the segment store are reachable")
    p.add_argument("--write", action="store_true", help="also write and delete a probe object in the segment store")
    p = sub.add_parser("add-channel", help="add channel partitions to the Dagster instance ($DAGSTER_HOME)")
    p.add_argument("names", nargs="+")
    p = sub.add_parser("materialize", help="add a channel and materialize every built asset for it")
    p.add_argument("channel")
    sub.add_parser("demo", help="add the shipped demo channel and materialize every built asset for it")
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
        return add_channels([channel]) or materialize(channel)
    return 2


if __name__ == "__main__":
    sys.exit(main())
