"""The console of `neutts-assets demo` and `neutts-assets materialize`: one line per asset as it
starts and as it finishes (status, seconds, its figures), then a summary table.

The figures are read from the run's own events in the instance's event log (the materializations'
metadata, the step and check events), never recomputed. The run executes in this process, as
`dagster asset materialize` would (same job, same executor: one process per step); a thread follows
the run's events while it goes. Everything the run prints (Dagster's DEBUG event log, the libraries'
warnings and progress bars, from every step process) goes to a log file under
$DAGSTER_HOME/cli_logs/ instead of the console; `--verbose` sends it to the console as before.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from neutts_assets.pipeline.encoding.codec import CODES_PER_SECOND, RANDOM_LABEL

TOKEN_TAG = "neutts/cli-run"  # finds the run this command started, while it runs
PROGRESS_EVERY_S = 60.0  # an asset's progress lines reach the console at most this often
MAX_TEXT = 300
NOT_EXECUTED = re.compile(r"Dependencies for step (\S+) (failed|were not executed): \[(.*)\]\. Not executing\.?$")


def assets_job(assets: list[str]):
    """The job `dagster asset materialize -m neutts_assets.definitions --select ...` runs: the implicit
    job of the selected assets, reconstructable from the code location in each step's process.

    `dagster.reconstructable` refuses the implicit asset job (its name is reserved), so this builds
    the job's pointer as Dagster's own CLI does, through the repository; dagster is pinned
    (pyproject.toml), and test_cli_local runs this path."""
    from dagster import AssetKey
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from neutts_assets.definitions import defs

    wanted = {AssetKey.from_user_string(a) for a in assets}
    keys = [k for k in defs.resolve_asset_graph().toposorted_asset_keys if k in wanted]  # the graph's order
    job = defs.resolve_implicit_job_def_def_for_assets(keys)
    recon = ReconstructableRepository.for_module("neutts_assets.definitions", "defs").get_reconstructable_job(job.name)
    return job, recon, keys


# ---- figures from a materialization's metadata ---------------------------------------------------


@dataclass
class Figures:
    segments: object = None  # what the channel holds after the run
    hours: float | None = None
    throughput: str | None = None  # this run's rate, with its unit
    failed: object = None
    note: str = ""


def _rate(value, unit: str) -> str | None:
    if not value:
        return None
    value = float(value)
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}" if value >= 1 else f"{value:.2f} {unit}"


def _raw_audio(m: dict) -> Figures:
    size = m.get("audio_bytes")
    return Figures(
        note=f"{m.get('recordings')} recordings paired ({m.get('transcripts_found')} transcripts, "
        f"{m.get('audio_objects_found')} audio objects"
        + (f", {size / 1e6:.1f} MB of audio" if isinstance(size, int) else "")
        + f"), {m.get('unpaired_objects')} objects unpaired"
    )


def _segments_npz(m: dict) -> Figures:
    processed = (m.get("files_new") or 0) + (m.get("files_changed") or 0)
    return Figures(
        segments=m.get("segments_in_channel"),
        hours=m.get("segment_hours_in_channel"),
        throughput=_rate(m.get("audio_seconds_per_wall_second"), "audio-h/h") if processed else None,
        failed=m.get("files_failed"),
        note=f"{m.get('segments_in_channel')} segments in channel: {m.get('segments_written')} written, "
        f"{m.get('segments_already_written')} kept, {m.get('segments_skipped')} skipped, "
        f"{m.get('segments_removed')} removed; files {m.get('files_new')} new, {m.get('files_changed')} changed, "
        f"{m.get('files_unchanged')} unchanged, {m.get('files_failed')} failed",
    )


def _encoded_segments(m: dict) -> Figures:
    codec = str(m.get("codec", ""))
    test_only = RANDOM_LABEL in codec  # what the asset's test_only_codes entry says, from the same label
    encoded = m.get("segments_encoded") or 0
    rates = [
        r
        for r in (_rate(m.get("audio_seconds_per_second"), "audio-h/h"), _rate(m.get("segments_per_second"), "seg/s"))
        if r
    ]
    codes = m.get("codes_in_channel")
    return Figures(
        segments=m.get("segments_with_codes_in_channel"),
        hours=codes / CODES_PER_SECOND / 3600 if codes is not None else None,
        throughput=", ".join(rates) if encoded and rates else None,
        failed=m.get("segments_failed"),
        note=f"{encoded} encoded, {m.get('segments_already_encoded')} already encoded, "
        f"{m.get('segments_skipped')} skipped, {m.get('segments_failed')} failed; codec {codec}"
        + (" (TEST-ONLY codes)" if test_only else ""),
    )


def _hf_dataset(m: dict) -> Figures:
    size = m.get("dataset_bytes")
    return Figures(
        segments=m.get("rows"),
        hours=m.get("hours"),
        throughput=_rate(m.get("rows_per_second"), "rows/s") if m.get("rebuilt") else None,
        failed=m.get("segments_failed"),
        note=f"{m.get('rows')} rows in {m.get('shards')} shard(s)"
        + (f", {size / 1e6:.1f} MB" if isinstance(size, int) else "")
        + f"; {m.get('build_plan') or ('rebuilt' if m.get('rebuilt') else 'unchanged')}",
    )


def _segment_quality(m: dict) -> Figures:
    hours, cpu = m.get("audio_hours_scored") or 0, m.get("scoring_seconds") or 0
    return Figures(
        segments=m.get("segments"),
        throughput=_rate(hours * 3600 / cpu, "audio-h/h") if hours and cpu else None,
        failed=m.get("segments_failed"),
        note=f"{m.get('segments_scored_now')} scored, {m.get('segments_unchanged')} unchanged; scorer {m.get('scorer')}",
    )


def _training_pairs(m: dict) -> Figures:
    wall = m.get("wall_seconds")
    pairs = m.get("pairs") or 0
    return Figures(
        segments=m.get("rows_used"),
        throughput=_rate(pairs / wall, "pairs/s") if m.get("rebuilt") and wall else None,
        note=f"{pairs} pairs of {m.get('speakers')} speakers from {m.get('rows_used')} segments"
        + ("" if m.get("rebuilt") else " (already published)"),
    )


FIGURES: dict[str, Callable[[dict], Figures]] = {
    "raw_audio": _raw_audio,
    "segments_npz": _segments_npz,
    "segment_quality": _segment_quality,
    "encoded_segments": _encoded_segments,
    "hf_dataset": _hf_dataset,
    "training_pairs": _training_pairs,
}


def figures(asset: str, metadata: dict) -> Figures:
    try:
        return FIGURES.get(asset, lambda m: Figures())(metadata)
    except Exception as exc:  # metadata of another shape: the line says so, the run's result stands
        return Figures(note=f"(figures unavailable: {type(exc).__name__}: {exc})")


# ---- the run's events, as console lines ----------------------------------------------------------


@dataclass
class AssetState:
    name: str
    status: str = "not run"
    started: float | None = None
    seconds: float | None = None
    metadata: dict = field(default_factory=dict)
    error: str = ""
    last_line: float = 0.0
    announced: bool = False


def _short(text: str, channel: str | None = None) -> str:
    """One console line: whitespace collapsed, the channel's "C: " prefix dropped, at most MAX_TEXT characters."""
    text = " ".join(str(text).split())
    if channel and text.startswith(f"{channel}: "):
        text = text[len(channel) + 2 :]
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _failure_text(data) -> str:
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description
    error = getattr(data, "error", None)
    return error.message.strip() if error is not None else "failed"


class RunConsole:
    """Turns the run's event log entries into console lines and keeps each asset's state for the summary."""

    def __init__(self, assets: list[str], channel: str, out: IO[str], live: bool = True):
        self.assets = {a: AssetState(a) for a in assets}
        self.channel, self.out, self.live = channel, out, live
        self.width = max(len(a) for a in assets)
        self.checks_passed, self.checks_failed = 0, []
        self.run_status, self.run_seconds, self.run_started = None, None, None

    def line(self, asset: str, status: str, text: str = "", seconds: float | None = None) -> None:
        if not self.live:
            return
        secs = f"{seconds:.1f} s" if seconds is not None else ""
        self.out.write(f"  {asset:<{self.width}}  {status:<7} {secs:>8}  {text}".rstrip() + "\n")
        self.out.flush()

    def _asset_of(self, step_key: str | None) -> str | None:
        if step_key in self.assets:
            return step_key
        # An asset check's step is named {asset}_{check}: the longest asset name it starts with.
        owners = [a for a in self.assets if step_key and step_key.startswith(a + "_")]
        return max(owners, key=len) if owners else None

    def handle(self, entry) -> None:
        event = entry.dagster_event
        asset = self._asset_of(entry.step_key)
        if event is None:
            if asset is not None:
                self._log(self.assets[asset], entry)
            return
        kind = event.event_type.name
        if kind in ("RUN_START", "RUN_SUCCESS", "RUN_FAILURE", "RUN_CANCELED"):
            self._run_event(kind, entry)
        elif kind == "ASSET_CHECK_EVALUATION":
            self._check(event.event_specific_data)
        elif asset is not None and entry.step_key == asset:
            self._step(self.assets[asset], kind, event, entry.timestamp)
        elif asset is not None and kind == "STEP_FAILURE":  # a check's step that raised
            failure = f"{entry.step_key} failed: {_failure_text(event.event_specific_data)}"
            self.checks_failed.append(failure)
            self.line(asset, "check", _short(failure))

    def _log(self, state: AssetState, entry) -> None:
        skipped = NOT_EXECUTED.match(entry.user_message or "")
        if skipped:  # the executor's word for a step whose upstream failed: a status, not an error
            if skipped.group(1) == state.name:
                state.status = "skipped"
                why = "failed" if skipped.group(2) == "failed" else "did not run"
                self.line(state.name, "skipped", f"not run: {skipped.group(3).replace(chr(39), '')} {why}")
            return
        if entry.level >= logging.WARNING:
            status = "error" if entry.level >= logging.ERROR else "warning"
            self.line(state.name, status, _short(entry.user_message, self.channel))
            state.last_line = entry.timestamp
        elif entry.level >= logging.INFO and entry.step_key == state.name:
            # Its first message is the asset's plan; progress lines after it come at most every minute.
            if not state.announced or entry.timestamp - state.last_line >= PROGRESS_EVERY_S:
                self.line(
                    state.name,
                    "started" if not state.announced else "running",
                    _short(entry.user_message, self.channel),
                )
                state.announced, state.last_line = True, entry.timestamp

    def _step(self, state: AssetState, kind: str, event, timestamp: float) -> None:
        if kind == "STEP_START":
            state.status, state.started, state.last_line = "running", timestamp, timestamp
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            state.metadata = {k: v.value for k, v in materialization.metadata.items()}
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            state.seconds = timestamp - state.started if state.started is not None else None
            if kind == "STEP_SUCCESS":
                state.status = "ok"
                self.line(state.name, "ok", _short(figures(state.name, state.metadata).note), state.seconds)
            else:
                state.status, state.error = "FAILED", _failure_text(event.event_specific_data)
                self.line(state.name, "FAILED", _short(state.error, self.channel), state.seconds)
        elif kind == "STEP_SKIPPED":
            state.status = "skipped"
            self.line(state.name, "skipped", "not run: a step it depends on failed")

    def _check(self, evaluation) -> None:
        if evaluation.passed:
            self.checks_passed += 1
            return
        asset = evaluation.asset_key.to_user_string()
        text = f"{evaluation.check_name} did not pass ({evaluation.severity.value})" + (
            f": {evaluation.description}" if evaluation.description else ""
        )
        self.checks_failed.append(f"{asset}: {text}")
        self.line(asset if asset in self.assets else "check", "check", _short(text, self.channel))

    def _run_event(self, kind: str, entry) -> None:
        if kind == "RUN_START":
            self.run_started = entry.timestamp
            return
        self.run_status = kind
        if self.run_started is not None:
            self.run_seconds = entry.timestamp - self.run_started
        if self.live:
            took = f" in {self.run_seconds:.1f} s" if self.run_seconds is not None else ""
            self.out.write(f"run {entry.run_id[:8]}: {kind}{took}\n")
            self.out.flush()

    def summary(self) -> list[str]:
        headers = ["asset", "status", "segments", "audio h", "throughput", "failed", "seconds"]
        rows = []
        for state in self.assets.values():
            f = figures(state.name, state.metadata) if state.metadata else Figures()
            rows.append(
                [
                    state.name,
                    state.status,
                    _cell(f.segments),
                    _hours(f.hours),
                    f.throughput or "-",
                    _cell(f.failed),
                    f"{state.seconds:.1f}" if state.seconds is not None else "-",
                ]
            )
        took = f", {self.run_seconds:.1f} s" if self.run_seconds is not None else ""
        lines = [f"summary: channel {self.channel}, {self.run_status or 'run did not finish'}{took}"]
        lines += ["  " + row for row in _table(headers, rows, right={2, 3, 5, 6})]
        lines.append(f"  asset checks: {self.checks_passed} passed, {len(self.checks_failed)} did not pass")
        lines += [f"    {c}" for c in self.checks_failed]
        lines += [f"  {s.name} failed: {' '.join(s.error.split())}" for s in self.assets.values() if s.error]
        return lines


def _cell(value) -> str:
    return "-" if value is None else str(value)


def _hours(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return [fmt(headers), *(fmt(r) for r in rows)]


# ---- following the run, quieting it --------------------------------------------------------------


class RunFollower:
    """Reads the run's new event log entries (found by its TOKEN_TAG) into the console, from a thread
    while the run goes, then once more at the end."""

    def __init__(self, token: str, console: RunConsole, poll_s: float = 0.5):
        self.token, self.console, self.poll_s = token, console, poll_s
        self.run_id: str | None = None
        self.cursor: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="neutts-console", daemon=True)

    def drain(self, instance, run_id: str | None = None) -> None:
        if self.run_id is None:
            self.run_id = run_id or self._find(instance)
        while self.run_id is not None:
            connection = instance.get_records_for_run(self.run_id, cursor=self.cursor)
            for record in connection.records:
                self.console.handle(record.event_log_entry)
            self.cursor = connection.cursor or self.cursor
            if not connection.has_more:
                return

    def _find(self, instance) -> str | None:
        from dagster import RunsFilter

        records = instance.get_run_records(RunsFilter(tags={TOKEN_TAG: self.token}), limit=1)
        return records[0].dagster_run.run_id if records else None

    def _follow(self) -> None:
        from dagster import DagsterInstance

        try:
            with DagsterInstance.get() as instance:  # its own connections, apart from the run's
                while not self.stop.is_set():
                    self.drain(instance)
                    self.stop.wait(self.poll_s)
        except Exception as exc:  # the console misses live lines; the final drain still reads every event
            print(f"console: following the run failed ({type(exc).__name__}: {exc})", file=sys.stderr)


@contextmanager
def output_to(path: Path | None) -> Iterator[IO[str]]:
    """Sends file descriptors 1 and 2 (this process's output and that of every step process it starts)
    to `path` and yields a stream to the console; `None`: leaves the output where it is."""
    if path is None:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved[0]), "w", encoding=sys.stdout.encoding or "utf-8", errors="replace")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield console
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        console.close()
        os.close(saved[0])
        os.close(saved[1])


def log_path(instance, channel: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    safe = re.sub(r"[^\w.-]+", "_", channel)
    return Path(instance.root_directory) / "cli_logs" / f"materialize-{safe}-{stamp}.log"


def _execute(instance, channel: str, job, run_config: dict | None, console: RunConsole, follow: bool):
    """Runs `job` = (its definition, the reconstructable job, the asset keys) for the channel, with a
    follower thread feeding the console while it goes; then reads whatever events are left."""
    from dagster import execute_job

    definition, recon, keys = job
    token = uuid.uuid4().hex
    tags = {**definition.get_tags_for_partition_key(channel, selected_asset_keys=keys), TOKEN_TAG: token}
    follower = RunFollower(token, console)
    if follow:
        follower.thread.start()
    try:
        result = execute_job(recon, instance, run_config=run_config, tags=tags, asset_selection=keys)
    finally:
        follower.stop.set()
        if follow:
            follower.thread.join()
    follower.drain(instance, result.run_id)
    return result


def materialize_assets(channel: str, assets: list[str], run_config: dict | None = None, verbose: bool = False) -> int:
    """Materializes `assets` for the channel in one run, showing the console (or, with `verbose`,
    Dagster's whole event log) and then the summary table. Returns the exit status: 0 when the run succeeded."""
    import traceback

    from dagster import DagsterInstance

    job = assets_job(assets)
    assets = [k.to_user_string() for k in job[2]]  # in the graph's order
    with DagsterInstance.get() as instance:
        path = None if verbose else log_path(instance, channel)
        print(f"materializing {', '.join(assets)} for channel {channel!r}", flush=True)
        if path is not None:
            print(f"the run's full output (Dagster's event log, warnings): {path}", flush=True)
        error, result = None, None
        with output_to(path) as out:
            console = RunConsole(assets, channel, out, live=not verbose)
            try:
                result = _execute(instance, channel, job, run_config, console, follow=not verbose)
            except Exception as exc:  # a run that could not start: the traceback goes to the log
                traceback.print_exc()
                error = f"{type(exc).__name__}: {exc}"
    print()
    for line in console.summary():
        print(line)
    if result is None:
        print(f"error: the run could not be executed: {_short(error)}" + (f" (see {path})" if path else ""))
        return 1
    if not result.success and path is not None:
        print(f"the run failed; its full output: {path}")
    return 0 if result.success else 1
