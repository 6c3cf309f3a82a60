"""The dataset card (README.md): YAML that `datasets` reads (one config per channel plus "all",
each listing its shards by name, with the features, and "text_codes": every channel's shards
read without the audio column, for NeuTTS fine-tuning) and a Markdown body a person reads: the
features, and per channel segments, hours, speakers, gender / dialect / tone mix, a duration
histogram, the codec, the source prefix and the build date; and, given the training_pairs
records, each channel's pairs (speakers, pairs, pairs per speaker).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from neutts_assets.pipeline.dataset.splits import SPLITS, TRAIN
from neutts_assets.pipeline.quality.distribution import QUANTILE_HEADERS, QUANTILE_NAMES

ALL_CONFIG = "all"
# Every channel's shards without the audio column (the Parquet builder's `columns`, from the
# YAML: column projection, no extra files): the text + codes NeuTTS fine-tuning reads, whose rows
# go through default_data_collator as they are.
TEXT_CODES_CONFIG = "text_codes"
RESERVED_CONFIGS = (ALL_CONFIG, TEXT_CODES_CONFIG)


def usable_channel(name) -> bool:
    """add-channel, the sensor and the assets refuse names that would break the card (layout.py);
    a record with one, from a partition added around them, is left out of the card, never breaking it."""
    from neutts_assets.pipeline.inventory.source_layout import UnsafeNameError, check_channel_name

    try:
        return check_channel_name(name) == name
    except (UnsafeNameError, TypeError, AttributeError):
        return False


def text_codes_features():
    """The users' columns less `audio`: the text_codes config's (the split, scores and lineage are
    left out too, so the rows reaching default_data_collator are what they always were)."""
    from datasets import Features

    from neutts_assets.pipeline.dataset.rows import USERS_COLUMNS, dataset_features

    features = dataset_features()
    return Features({name: features[name] for name in USERS_COLUMNS if name != "audio"})


def _split_parts(record: dict) -> dict[str, dict]:
    """A channel's shards by split, in split order: {"paths", "num_examples", "num_bytes"} each."""
    out: dict[str, dict] = {}
    for shard in record["shards"]:
        part = out.setdefault(shard.get("split", TRAIN), {"paths": [], "num_examples": 0, "num_bytes": 0})
        part["paths"].append(shard["path"])
        # A shard entry without its row count (an older record's): the channel's count, when it has one split.
        rows = shard.get("rows")
        part["num_examples"] = None if rows is None or part["num_examples"] is None else part["num_examples"] + rows
        part["num_bytes"] += shard.get("bytes") or 0
    if len(out) == 1 and next(iter(out.values()))["num_examples"] is None:
        next(iter(out.values()))["num_examples"] = record.get("stats", {}).get("rows")
    return {split: out[split] for split in sorted(out, key=_split_order)}


def _split_order(split: str) -> tuple:
    return (SPLITS.index(split), "") if split in SPLITS else (len(SPLITS), split)


def _configs_yaml(records: list[dict], foreign: dict[str, dict]):
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    from neutts_assets.pipeline.dataset.rows import dataset_features

    features = dataset_features()
    configs, infos = {}, {}

    def add(name: str, channels: list[dict[str, dict]], default: bool = False, features=features, columns=None):
        """channels: each channel's parts by split ({"paths", "num_examples", "num_bytes"}); split sizes
        only when every part knows them. `columns`: the Parquet builder reads only those (its `columns`
        parameter, given in the YAML)."""
        splits = sorted({split for parts in channels for split in parts}, key=_split_order)
        by_split = {split: [parts[split] for parts in channels if split in parts] for split in splits}
        configs[name] = {
            "data_files": [
                {"split": split, "path": [p for part in by_split[split] for p in part["paths"]]} for split in splits
            ],
            **({"columns": list(columns)} if columns is not None else {}),
            **({"default": True} if default else {}),
        }
        split_dict = None
        if all(part.get("num_examples") is not None for parts in by_split.values() for part in parts):
            split_dict = SplitDict()
            for split, parts in by_split.items():
                # A projected config reads part of the shards' bytes: it states its rows, not the shards' size.
                split_dict.add(
                    SplitInfo(
                        split,
                        num_bytes=0 if columns is not None else sum(part.get("num_bytes") or 0 for part in parts),
                        num_examples=sum(part["num_examples"] for part in parts),
                    )
                )
        infos[name] = DatasetInfo(features=features, splits=split_dict, config_name=name)

    # A channel named like a reserved config ("all", "text_codes") is not usable either.
    records = [r for r in records if usable_channel(r["channel"])]
    foreign = {name: parts for name, parts in foreign.items() if usable_channel(name)}
    parts = {r["channel"]: _split_parts(r) for r in records}
    parts.update({name: p for name, p in foreign.items() if name not in parts and name not in RESERVED_CONFIGS})
    # A channel whose every segment was filtered out has no shard: a config with no files would not load.
    channels = sorted(name for name, p in parts.items() if any(part["paths"] for part in p.values()))
    if channels:
        add(ALL_CONFIG, [parts[c] for c in channels], default=True)
        text_codes = text_codes_features()
        add(TEXT_CODES_CONFIG, [parts[c] for c in channels], features=text_codes, columns=list(text_codes))
    for c in channels:
        add(c, [parts[c]])
    return MetadataConfigs(configs), DatasetInfosDict(infos)


def foreign_configs(card_text: str, known: set[str], present: set[str]) -> dict[str, dict[str, dict]]:
    """The per-channel configs of an existing card (the Hub's) for channels this store does not know
    (pushed from another store), kept when all their files are still there: their parts by split."""
    from huggingface_hub import DatasetCard

    data = DatasetCard(card_text).data.to_dict()
    sizes = {}
    infos = data.get("dataset_info") or []
    for info in [infos] if isinstance(infos, dict) else infos:
        for split in info.get("splits") or []:
            sizes[(info.get("config_name"), split.get("name"))] = (split.get("num_examples"), split.get("num_bytes"))
    out = {}
    for config in data.get("configs") or []:
        name = config.get("config_name")
        if name in known or name in RESERVED_CONFIGS or not config.get("data_files"):
            continue
        parts = {}
        for entry in config["data_files"]:
            paths = entry.get("path")
            paths = [paths] if isinstance(paths, str) else list(paths or [])
            examples, nbytes = sizes.get((name, entry.get("split")), (None, None))
            parts[entry.get("split") or TRAIN] = {"paths": paths, "num_examples": examples, "num_bytes": nbytes}
        all_paths = [p for part in parts.values() for p in part["paths"]]
        if all_paths and all(p in present for p in all_paths):
            out[name] = parts
    return out


def _cell(text: str) -> str:
    # Transcript labels are untrusted: keep them from breaking a Markdown table.
    return str(text).replace("|", "\\|").replace("\n", " ")[:100]


def _mix(counts: dict, total: int) -> str:
    if not counts:
        return "_none_"
    return ", ".join(f"{_cell(k) or '(empty)'} {v} ({100 * v / max(total, 1):.0f}%)" for k, v in counts.items())


def _by_lower_edge(label: str) -> float:
    """A histogram bin's lower edge from its label ("2-3 s", "-30 to -20", "≥ 30 s"): the record is
    stored with sorted keys, so the bins are put back in order by value, not by their text."""
    match = re.match(r"\s*(≥\s*)?(-?[0-9.]+)", label)
    return float(match[2]) + (0.5 if match[1] else 0.0) if match else float("inf")


def _histogram(hist: dict, width: int = 30, name: str = "duration") -> str:
    peak = max(hist.values(), default=0) or 1
    lines = [f"| {name} | segments | |", "|---|---:|---|"]
    lines += [f"| {b} | {hist[b]} | {'█' * round(width * hist[b] / peak)} |" for b in sorted(hist, key=_by_lower_edge)]
    return "\n".join(lines)


def channel_section(record: dict) -> str:
    """One channel's part of the card; also the Markdown metadata of its materialization."""
    s = record["stats"]
    codecs = (
        ", ".join(f"`{_cell(c)}` ({n})" for c, n in s["codecs"].items()) or "none: rows without codes (no-codes option)"
    )
    if any("random-weights" in c for c in s["codecs"]):
        codecs += " **(random weights: test-only codes, do not train on them)**"
    return "\n".join(
        [
            f"### {record['channel']}",
            "",
            "| | |",
            "|---|---|",
            f"| segments | {s['rows']} |",
            f"| hours | {s['hours']:.2f} |",
            f"| speakers (per recording) | {s['speakers']} |",
            f"| rows with codes | {s['rows_with_codes']} |",
            f"| codec | {codecs} |",
            f"| gender | {_mix(s['gender'], s['rows'])} |",
            f"| dialect | {_mix(s['dialect'], s['rows'])} |",
            f"| tone | {_mix(s['tone'], s['rows'])} |",
            f"| left out | {_left_out(record)} |",
            f"| source | `{record['source']}` |",
            f"| built | {record['built_at']} (build `{record['build_id']}`) |",
            f"| shards | {len(record['shards'])} ({sum(x['bytes'] for x in record['shards']) / 1e6:.1f} MB) |",
            "",
            _splits_table(record),
            "",
            _histogram(s["duration_histogram"]),
            "",
            *_quality_tables(s),
        ]
    )


def _left_out(record: dict) -> str:
    """The segments that became no row, by reason (the filters' counts among them)."""
    reasons: dict[str, int] = {}
    for entry in record.get("excluded", []):
        reason = entry[4] if entry[3] == "skipped" else "unreadable or invalid"
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return "none"
    return ", ".join(f"{_cell(r)} {n}" for r, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))


def _splits_table(record: dict) -> str:
    """Each split's rows, hours and speakers (speakers never cross splits: pipeline/dataset/splits.py)."""
    split_stats = record.get("split_stats") or {TRAIN: record["stats"]}
    lines = ["| split | rows | hours | speakers |", "|---|---:|---:|---:|"]
    lines += [
        f"| {split} | {st['rows']} | {st['hours']:.2f} | {st['speakers']} |"
        for split, st in sorted(split_stats.items(), key=lambda x: _split_order(x[0]))
    ]
    rule = record.get("split_rule")
    if rule:
        unit = (
            f"speaker ids matching `{_cell(rule['global_speakers'])}`, else the recording"
            if rule.get("global_speakers")
            else "the recording"
        )
        lines += [
            "",
            f"Split by {unit}: validation {rule['validation_fraction']:g}, test {rule['test_fraction']:g} "
            f"(stable hash `{rule['salt']}`).",
        ]
    return "\n".join(lines)


def _quality_tables(stats: dict) -> list[str]:
    """Each score's quantiles (one table), then a histogram per score that has values."""
    quality = quality_in_order(stats)
    scored = {name: q for name, q in quality.items() if q["scored"]}
    if not quality:
        return []
    lines = [
        f"| score | rows scored | not scored | {' | '.join(QUANTILE_HEADERS)} |",
        "|---|---:|---:|" + "---:|" * len(QUANTILE_HEADERS),
    ]
    for name, q in quality.items():
        qs = q["quantiles"] or {}
        cells = " | ".join(f"{qs[k]:g}" if k in qs else "-" for k in QUANTILE_NAMES)
        lines.append(f"| `{name}` | {q['scored']} | {q['unscored']} | {cells} |")
    lines.append("")
    for name, q in scored.items():
        lines += [_histogram(q["histogram"], width=20, name=f"`{name}`"), ""]
    return lines


def quality_in_order(stats: dict) -> dict:
    """A channel's score figures (ChannelStats.to_dict's `quality`) in the scores' own order: the
    record is stored with sorted keys, so a record read back would list them alphabetically."""
    from neutts_assets.pipeline.quality.scores import ALL_SCORE_NAMES

    quality = stats.get("quality") or {}

    def order(name: str) -> tuple:
        return (ALL_SCORE_NAMES.index(name), "") if name in ALL_SCORE_NAMES else (len(ALL_SCORE_NAMES), name)

    return {name: quality[name] for name in sorted(quality, key=order)}


def pairs_section(pairs: list[dict], records: list[dict]) -> str:
    """The training_pairs builds (their records, pipeline/pairs/training_pairs.py): per channel speakers
    (recording + speaker_id groups), pairs and pairs per speaker. A build made from a dataset build
    that is no longer the channel's published one is marked stale."""
    current = {r["channel"]: r["build_id"] for r in records}
    lines = [
        "## Training pairs",
        "",
        "Voice-cloning (ref, target) pairs, as the users' pair builder makes them: segments grouped by recording and "
        "speaker_id, every ordered pair of two different segments of a group (or a seeded sample of "
        "`max_pairs_per_speaker`). Each channel's pairs are a `save_to_disk` folder in the store: "
        '`datasets.load_from_disk("<store>/training_pairs/<channel>")`.',
        "",
        "| channel | speakers | pairs | pairs per speaker (min / median / max) | segments used | durations | audio | built |",
        "|---|---:|---:|---|---:|---|---|---|",
    ]
    for p in sorted(pairs, key=lambda p: p["channel"]):
        c, st = p["counts"], p["settings"]
        per = c["pairs_per_speaker"]
        stale = (
            "" if current.get(p["channel"]) == p["dataset_build_id"] else " **stale: made from an older dataset build**"
        )
        cap = (
            f", at most {st['max_pairs_per_speaker']} per speaker (seed {st['random_seed']})"
            if st.get("max_pairs_per_speaker") is not None
            else ""
        )
        lines.append(
            f"| {_cell(p['channel'])} | {c['speakers']} | {c['pairs']} | {per['min']} / {per['median']:g} / {per['max']} | "
            f"{c['rows_used']} of {c['rows_in_dataset']} | {st['min_duration_sec']:g}-{st['max_duration_sec']:g} s{cap} | "
            f"{'yes' if st.get('include_audio') else 'no'} | {p['built_at']} (build `{p['build_id']}` of dataset build "
            f"`{p['dataset_build_id']}`){stale} |"
        )
    return "\n".join(lines + [""])


def card_body(records: list[dict], title: str, pairs: list[dict] | None = None) -> str:
    """`pairs`: the training_pairs records (training_pairs.read_pair_records); a section when given."""
    from neutts_assets.pipeline.dataset.rows import dataset_features

    records = sorted((r for r in records if usable_channel(r["channel"])), key=lambda r: r["channel"])
    rows = sum(r["stats"]["rows"] for r in records)
    hours = sum(r["stats"]["seconds"] for r in records) / 3600
    feature_lines = [f"| `{name}` | `{feature!r}` |" for name, feature in dataset_features().items()]
    overview = [
        f"| {r['channel']} | {r['stats']['rows']} | {r['stats']['hours']:.2f} | {r['stats']['speakers']} | "
        f"{', '.join(r['stats']['codecs']) or 'none'} | {r['built_at']} |"
        for r in records
    ]
    first = records[0]["channel"] if records else "CHANNEL"
    return "\n".join(
        [
            f"# {title}",
            "",
            "NeuTTS voice-cloning segments: 16 kHz speech with its transcript, speaker labels and NeuCodec VQ codes "
            "(50 per second, values 0..65535).",
            "",
            f"Card generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}; "
            f"{len(records)} channel(s), {rows} segments, {hours:.2f} hours.",
            "",
            "## Loading",
            "",
            "```python",
            "from datasets import load_dataset",
            'ds = load_dataset("<this folder or repo>", split="train")            # all channels',
            f'ds = load_dataset("<this folder or repo>", "{first}", split="train")  # one channel',
            f'ds = load_dataset("<this folder or repo>", "{TEXT_CODES_CONFIG}", split="train")  # all channels, no audio column',
            f'val = load_dataset("<this folder or repo>", "{first}", split="validation")  # where it has one (below)',
            "```",
            "",
            "Splits are speaker-disjoint: whole recordings go to one split (speaker_id is a per-recording label), "
            "by a stable hash of the recording, so adding recordings or channels never moves a row to another "
            "split. Each row also carries its `split`, its quality scores (null where not scored) and its lineage: "
            "the source audio object and version, the transcript and its SHA-256, `start_ms`/`end_ms`, the cut "
            "rules, the codec and the build that wrote it (`neutts-assets explain CHANNEL/AUDIO_ID`).",
            "",
            f"`{TEXT_CODES_CONFIG}` reads every channel's shards without the `audio` column (Parquet column projection): "
            "text, codes and the labels, what NeuTTS fine-tuning reads, and rows that `default_data_collator` takes "
            "once `text` and `codes` are mapped to token ids.",
            "",
            "## Features",
            "",
            "| column | feature |",
            "|---|---|",
            *feature_lines,
            "",
            "## Channels",
            "",
            "| channel | segments | hours | speakers | codec | built |",
            "|---|---:|---:|---:|---|---|",
            *overview,
            "",
            *[channel_section(r) for r in records],
            *([pairs_section(pairs, records)] if pairs else []),
        ]
    )


def render_card(
    records: list[dict], title: str, foreign: dict[str, dict] | None = None, pairs: list[dict] | None = None
) -> str:
    """`foreign`: configs of channels pushed to the same Hub repo from another store, kept as they were.
    `pairs`: the training_pairs records, for the card's pairs section (none: no section)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    foreign = foreign or {}
    data = DatasetCardData(pretty_name=title, task_categories=["text-to-speech"])
    configs, infos = _configs_yaml(records, foreign)
    configs.to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    body = card_body(records, title, pairs)
    if foreign:
        body += (
            "\n## Other channels\n\nAlso in this repo, pushed from another store (their figures are in that "
            f"store's card): {', '.join(sorted(foreign))}.\n"
        )
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
