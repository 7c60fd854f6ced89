"""``puresound`` command line (typer + rich).

* ``puresound run PRESET PATHS... [--output DIR] [--workers N]``: the preset's Prefect flow
  over files and folders; exit 0 when every file was published or rejected with a reason,
  1 when any file failed or any rendition failed verification, 2 on usage errors.
* ``puresound analyze PATHS... [--json]``: validation and analysis only, no Prefect.
* ``puresound presets [NAME]``, ``puresound lineage PATH_OR_SHA256``.

Without ``PREFECT_API_URL`` ``run`` starts a temporary local Prefect server (SQLite) that
lives exactly as long as the command (:mod:`puresound.embedded`); with it, runs go to that
server and show in its UI. Heavy imports (numpy, PyAV, Prefect...) happen inside the
commands that need them, so ``--help``, ``presets`` and usage errors answer at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Offline-friendly default for the temporary server; an explicit setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Pure Sound: loudness-compliant audio renditions, by preset.")
console = Console()

def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files and folder contents to analyse (see :func:`puresound_core.storage.list_local_files`).

    Raises
    ------
    typer.BadParameter
        If a path does not exist.
    """
    from puresound_core.storage import list_local_files

    try:
        return [Path(p) for p in list_local_files(paths)]
    except FileNotFoundError as err:
        raise typer.BadParameter(str(err)) from err


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 2)


def _object_state(uri: str, sha256: str) -> str:
    """Whether a published rendition is still at its URI with its SHA-256: present, missing, changed or unknown.

    Local files are hashed; S3 objects are compared by the ``sha256`` metadata written at upload.
    """
    from puresound_core.storage import sha256_file

    try:
        if uri.startswith("file://"):
            from flows.models import SourceRef

            local = Path(SourceRef(uri=uri).local_path)
            if not local.is_file():
                return "missing"
            return "present" if sha256_file(local) == sha256 else "changed"
        if uri.startswith("s3://"):
            from botocore.exceptions import ClientError

            from puresound.settings import s3_client
            from puresound_core.storage.s3 import parse_s3_uri

            bucket, key = parse_s3_uri(uri)
            try:
                head = s3_client(_settings()).head_object(Bucket=bucket, Key=key)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return "missing"
                raise
            stored = head.get("Metadata", {}).get("sha256")
            return "unknown" if stored is None else ("present" if stored == sha256 else "changed")
    except Exception:  # noqa: BLE001 - an unreachable store is reported as such, never as present
        return "unknown"
    return "unknown"


def _analyze_one(path: Path) -> dict:
    from puresound_core.isolation import inspect_isolated

    # One decode in a child process: a decoder crash or hang fails a rule instead of killing us.
    inspection = inspect_isolated(path)
    validation, report = inspection.validation, inspection.analysis
    row = {"path": str(path), "valid": validation.passed, "failed_rules": validation.failed_rules,
           "reasons": [r.message for r in validation.failures], "integrated_lufs": None,
           "true_peak_dbtp": None, "lra_lu": None, "sample_peak_dbfs": None, "content_class": None}
    if report is None:
        return row
    loudness, content = report.loudness, report.content
    row.update(integrated_lufs=_finite(loudness.integrated_lufs), true_peak_dbtp=_finite(loudness.true_peak_dbtp),
               lra_lu=_finite(loudness.lra_lu), sample_peak_dbfs=_finite(loudness.sample_peak_dbfs),
               content_class=content.content_class, bandwidth_hz=round(content.bandwidth_hz),
               duration_s=round(loudness.duration_s, 3), sample_rate_hz=loudness.sample_rate_hz,
               channels=loudness.channels)
    return row


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Audio files or folders (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array, one object per file.")] = False,
) -> None:
    """Validate and analyse audio: loudness, true peak, LRA, content class."""
    files = expand_inputs(paths)
    rows = [_analyze_one(p) for p in files]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} files")
    for column in ("file", "verdict", "LUFS", "dBTP", "LRA LU", "class", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(escape(Path(row["path"]).name), "ok" if row["valid"] else "rejected",
                      *(("-" if row[k] is None else f"{row[k]:.1f}") for k in ("integrated_lufs", "true_peak_dbtp", "lra_lu")),
                      row["content_class"] or "-", escape("; ".join(row["failed_rules"])))
    console.print(table)


def _settings():
    from puresound.settings import PureSoundSettings

    return PureSoundSettings()


def _load_presets():
    from puresound_core.errors import PresetError
    from puresound_core.presets import load_presets

    try:
        return load_presets(_settings().presets_dir)
    except PresetError as err:
        console.print(f"[red]preset error:[/red] {err}")
        raise typer.Exit(2) from err


@contextlib.contextmanager
def _api_url_everywhere(url: str):
    """``PREFECT_API_URL`` in the environment and Prefect's process-global settings for the duration.

    ``temporary_settings`` reaches only this thread's context: threads without one (the
    process pool's message forwarder) read the global settings, and worker processes inherit
    the environment. Without this each of them would start a temporary server of its own.
    """
    from prefect.context import refresh_global_settings_context

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        refresh_global_settings_context()


@contextlib.contextmanager
def _prefect_api(settings):
    """``PREFECT_API_URL`` when set, else a temporary server that lives exactly as long as this command."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from puresound.embedded import EmbeddedServerError, embedded_server

    if PREFECT_API_URL.value():
        yield
        return
    try:
        with embedded_server(startup_timeout_s=settings.server_startup_timeout_s) as url, \
                temporary_settings({PREFECT_API_URL: url}), _api_url_everywhere(url):
            try:
                yield
            finally:
                _flush_to_api()  # logs and events reach the server before it stops
    except EmbeddedServerError as err:  # raised only while the server starts
        console.print(f"[red]cannot start Prefect:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None


def _flush_to_api() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    with contextlib.suppress(Exception):  # best effort: the run's outcome is already known
        APILogHandler().flush()
    with contextlib.suppress(Exception):
        EventsWorker.drain_all(timeout=10)


@app.command()
def run(
    preset: Annotated[str, typer.Argument(help="Preset name (see `puresound presets`).")],
    paths: Annotated[list[str], typer.Argument(help="Audio files, folders or s3://bucket/prefix.")],
    output: Annotated[str | None, typer.Option("--output", "-o", help="Output folder or s3://bucket/prefix "
                                                                     "(PURESOUND_OUTPUT_DIR).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, max=32, help="Files at once.")] = None,
) -> None:
    """Run a preset's flow: validate, analyse, render, verify, store, record lineage."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    presets = _load_presets()
    if preset not in presets:
        console.print(f"[red]unknown preset {preset!r}[/red]; known: {', '.join(sorted(presets))}")
        raise typer.Exit(2)
    for path in paths:
        if not path.startswith("s3://") and not Path(path).exists():
            raise typer.BadParameter(f"{path}: no such file or folder")
    settings = _settings()
    out_dir = output or str(settings.output_dir)
    # A quiet console for this command only: the flow still logs at INFO to the Prefect API
    # (the UI's Logs tab), and nothing here is inherited by `serve` or workers.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    import flows.presets as preset_flows

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task(preset, total=None)

        def listener(done: int, total: int, outcome) -> None:
            progress.update(bar, completed=done, total=total,
                            description=f"{preset}: {Path(outcome.path).name} {outcome.verdict}")

        flow_fn = preset_flows.preset_flow(presets[preset], workers=workers or settings.workers, on_progress=listener)
        request = preset_flows.RunRequest(sources=paths, output_dir=out_dir)
        with _prefect_api(settings):
            state = flow_fn(request=request, return_state=True)
    report = state.result(raise_on_failure=False)
    if not isinstance(report, preset_flows.BatchReport):
        console.print(f"[red]flow run failed:[/red] {state.message or report}")
        raise typer.Exit(1)
    table = Table(title=f"{preset} v{report.preset_version}: {report.counts}")
    for column in ("file", "verdict", "LUFS in", "LUFS out", "dBTP out", "reason"):
        table.add_column(column, overflow="fold")
    for row in preset_flows.summary_rows(report.sources):
        table.add_row(escape(row["file"]), row["verdict"], row["LUFS in"], row["LUFS out"], row["dBTP out"],
                      escape(row["reason"]))
    console.print(table)
    where = f"{out_dir.rstrip('/')}/{preset}" if out_dir.startswith("s3://") else Path(out_dir).resolve() / preset
    console.print(f"outputs and report.json under {where}")
    console.print(f"report: {where}/report.html")
    raise typer.Exit(1 if report.counts["failed"] else 0)


@app.command()
def report(path: Annotated[Path, typer.Argument(help="An output folder (or one preset's folder in it).")]) -> None:
    """Print where the HTML reports of an output folder are (one per preset: the latest run)."""
    if not path.is_dir():
        console.print(f"[red]{path}: no such folder[/red]")
        raise typer.Exit(2)
    found = sorted(p for p in [path / "report.html", *path.glob("*/report.html")] if p.is_file())
    if not found:
        console.print(f"no report.html under {path} (reports are written by `puresound run`)")
        raise typer.Exit(1)
    for page in found:
        typer.echo(page.resolve().as_uri())


@app.command()
def presets(name: Annotated[str | None, typer.Argument(help="Show one preset in full.")] = None) -> None:
    """List presets, or show one as JSON."""
    known = _load_presets()
    if name is not None:
        if name not in known:
            console.print(f"[red]unknown preset {name!r}[/red]; known: {', '.join(sorted(known))}")
            raise typer.Exit(2)
        typer.echo(known[name].model_dump_json(indent=2))
        return
    table = Table(title="presets")
    for column in ("name", "version", "target", "true peak", "renditions"):
        table.add_column(column, overflow="fold")
    for p in known.values():
        target = (f"{p.loudness.target_lufs:g} LUFS +-{p.loudness.tolerance_lu:g}" if p.loudness.target_lufs is not None
                  else f"RMS {p.loudness.target_rms_dbfs:g} dBFS" if p.loudness.target_rms_dbfs is not None else "-")
        ceiling = "-" if p.loudness.ceiling_dbtp is None else f"{p.loudness.ceiling_dbtp:g} dBTP"
        table.add_row(p.name, p.version, target, ceiling, ", ".join(r.name for r in p.renditions))
    console.print(table)


@app.command()
def lineage(query: Annotated[str, typer.Argument(help="A file path, a file:// or s3:// URI, or a SHA-256.")],
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show where a source went, or where a rendition came from; check each published object is still there."""
    from puresound_core.lineage import LineageStore
    from puresound_core.storage import sha256_file

    store = LineageStore(_settings().lineage_url)
    path = Path(query)
    chain = store.chain(sha256_file(path)) if path.is_file() else store.chain(query)
    for r in chain.renditions:
        r["object"] = _object_state(r["uri"], r["sha256"]) if r["verdict"] == "published" else None
    if as_json:
        typer.echo(chain.model_dump_json(indent=2))
        return
    if chain.matched == "none":
        console.print(f"no lineage for {query}")
        raise typer.Exit(1)
    source = chain.source
    if source is not None:
        console.print(f"[bold]source[/bold] sha256 {source['sha256']}  ({source['size_bytes']} bytes)")
        for location in source["locations"]:
            console.print(f"  seen at {location}", markup=False, highlight=False, soft_wrap=True)
    for r in chain.renditions:
        marker = "  <- this file" if r["matched"] else ""
        verdict = r["verdict"] if r["object"] in (None, "present") else f"{r['verdict']}, object {r['object']}"
        r = {**r, "verdict": verdict}
        console.print(f"  -> [{r['verdict']}] {r['preset']} v{r['preset_version']} {r['rendition']}: {r['uri']} "
                      f"({_finite(r['integrated_lufs'])} LUFS, {_finite(r['true_peak_dbtp'])} dBTP; run "
                      f"{r['flow_run_id']}, FFmpeg {r['ffmpeg_version']}){marker}", markup=False, highlight=False,
                      soft_wrap=True)


@app.command()
def serve(preset: Annotated[list[str] | None, typer.Option("--preset", help="Only these presets.")] = None) -> None:
    """Register and serve every preset's deployments (nightly, on-upload, manual) in this process."""
    from deployments.serve import serve_all

    presets = _load_presets()
    unknown = [p for p in preset or [] if p not in presets]
    if unknown:
        console.print(f"[red]unknown preset(s) {', '.join(unknown)}[/red]; known: {', '.join(sorted(presets))}")
        raise typer.Exit(2)
    serve_all(preset or None)


@app.command()
def deployments(prefect_yaml: Annotated[bool, typer.Option(
        "--prefect-yaml", help="Print prefect.yaml (the built-in presets' deployments for a work pool).")] = False,
        from_settings: Annotated[bool, typer.Option(
            "--from-settings", help="With --prefect-yaml: this site's presets (PURESOUND_PRESETS_DIR too), "
                                    "PURESOUND_NIGHTLY_* and PURESOUND_OUTPUT_DIR, schedules on (default: the "
                                    "committed file: built-in presets, placeholder locations, schedules off).")] = False,
) -> None:
    """List every preset's deployments (what `serve` registers), or print prefect.yaml from the same description."""
    import sys

    from deployments.specs import deployment_specs, prefect_yaml as make_prefect_yaml, yaml_of_builtin_presets

    settings = _settings()
    if from_settings and "nightly_source_root" not in settings.model_fields_set:
        console.print("[red]--from-settings needs PURESOUND_NIGHTLY_SOURCE_ROOT[/red]: the folder or s3:// prefix "
                      "holding <root>/<preset>/ (with the default, schedules would fire on a folder that does not "
                      "exist)")
        raise typer.Exit(2)
    if prefect_yaml:
        sys.stdout.write(make_prefect_yaml(_load_presets(), cron=settings.nightly_cron, timezone=settings.timezone,
                                           source_root=settings.nightly_source_root,
                                           output_dir=str(settings.output_dir))
                         if from_settings else yaml_of_builtin_presets())
        return
    for spec in deployment_specs(_load_presets(), source_root=settings.nightly_source_root,
                                 output_dir=str(settings.output_dir), cron=settings.nightly_cron,
                                 timezone=settings.timezone, schedules_active=True):
        schedule = f"  [{spec.cron} {spec.timezone}]" if spec.cron else ""
        console.print(f"{spec.flow_name}/{spec.name}{schedule}  {spec.parameters}", markup=False, highlight=False)


_POOL_OPTION = typer.Option("--pool", help="Work pool of the deployments (prefect.yaml's).")


@app.command()
def doctor(pool: Annotated[str, _POOL_OPTION] = "puresound-process") -> None:
    """Check what a production install depends on: Prefect API, workers, lineage database, shared state, S3."""
    from puresound.doctor import run_checks

    colours = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    checks = run_checks(pool=pool, settings=_settings())
    table = Table(show_header=True, header_style="bold")
    for column in ("check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", escape(check.detail))
    console.print(table)
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


@app.command()
def setup(
    pool: Annotated[str, _POOL_OPTION] = "puresound-process",
    heartbeat_s: Annotated[int, typer.Option(
        "--heartbeat-s", min=30, help="PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the workers; a run is Crashed after 3 "
                                      "missed heartbeats.")] = 180,
) -> None:
    """Create what the deployments need on the Prefect server: the process work pool and crash detection."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.recovery import ZOMBIE_AUTOMATION, ensure_zombie_automation, zombie_window_s

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            console.print(f"work pool {pool!r} (process) created")
        except ObjectAlreadyExists:
            console.print(f"work pool {pool!r} exists")
    _, within_s, created = ensure_zombie_automation(zombie_window_s(heartbeat_s))
    console.print(f"automation {ZOMBIE_AUTOMATION!r} {'created' if created else 'exists'}: a flow run without a "
                  f"heartbeat for {within_s:g} s is marked Crashed. Start every worker with "
                  f"PREFECT_FLOWS_HEARTBEAT_FREQUENCY={heartbeat_s} (or less).", markup=False, highlight=False)


@app.command("s3-bridge")
def s3_bridge(
    queue_url: Annotated[str, typer.Option("--queue-url", help="SQS queue fed by S3 ObjectCreated notifications.")],
    routes: Annotated[Path, typer.Option("--routes", help="YAML: routes: [{bucket, prefix, preset, output}].")],
    wait_time_s: Annotated[int, typer.Option("--wait", min=0, max=20, help="Long-poll seconds.")] = 20,
) -> None:
    """Start one on-upload flow run per uploaded object (exactly once per object version)."""
    import logging

    from puresound.bridge import Bridge, load_bridge_config
    from puresound.settings import sqs_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = _settings()
    sqs = sqs_client(settings)
    bridge = Bridge(sqs, queue_url, load_bridge_config(routes),
                    quarantine=settings.state_dir / "bridge-quarantine.jsonl")
    bridge.run(wait_time_s=wait_time_s)


@app.callback()
def main() -> None:
    """Pure Sound command line."""


if __name__ == "__main__":
    app()
