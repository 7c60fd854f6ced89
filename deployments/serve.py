"""Every preset's three deployments, served from one process (``puresound serve``).

Per preset ``P``:

* ``ingest-P/nightly``: the ingestion flow on a cron schedule with a timezone; parameter
  ``source`` is the prefix to list (``{nightly_source_root}/P`` by default);
* ``P/on-upload``: started by the S3 bridge, once per uploaded object;
* ``P/manual``: started from the UI; its ``request`` parameter is a pydantic model, so the
  UI shows a form (sources, output folder / prefix).
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.presets import RunRequest, ingest_flow, preset_flow
from puresound.settings import PureSoundSettings
from puresound_core.presets import Preset, load_presets

ON_UPLOAD = "on-upload"
MANUAL = "manual"
NIGHTLY = "nightly"


def build_deployments(presets: dict[str, Preset], settings: PureSoundSettings) -> list:
    """Runner deployments of every preset (see module docstring).

    Parameters
    ----------
    presets : dict of str to Preset
    settings : PureSoundSettings

    Returns
    -------
    list of prefect.deployments.runner.RunnerDeployment
    """
    # Defaults valid where the deployments run: absolute, from this process's settings.
    output = str(settings.output_dir.resolve())
    root = settings.nightly_source_root
    if not root.startswith("s3://"):
        root = str(Path(root).resolve())
    deployments = []
    for preset in presets.values():
        flow_fn = preset_flow(preset)
        ingest = ingest_flow(preset)
        tags = ["puresound", f"preset:{preset.name}"]
        deployments.append(ingest.to_deployment(
            name=NIGHTLY, entrypoint_type=EntrypointType.MODULE_PATH, tags=[*tags, NIGHTLY],
            description=f"Nightly ingestion of new sources for {preset.name} v{preset.version}: {preset.summary()}",
            schedules=[Cron(settings.nightly_cron, timezone=settings.timezone)],
            parameters={"source": f"{root.rstrip('/')}/{preset.name}", "output_dir": output}))
        deployments.append(flow_fn.to_deployment(
            name=ON_UPLOAD, entrypoint_type=EntrypointType.MODULE_PATH, tags=[*tags, ON_UPLOAD],
            description=f"{preset.name}: one uploaded object, started by the S3 bridge. {preset.summary()}",
            parameters={"request": RunRequest(sources=["s3://bucket/key"], output_dir=output).model_dump()}))
        deployments.append(flow_fn.to_deployment(
            name=MANUAL, entrypoint_type=EntrypointType.MODULE_PATH, tags=[*tags, MANUAL],
            description=f"{preset.name}: run on chosen files, folders or S3 prefixes from the UI. {preset.summary()}",
            parameters={"request": RunRequest(sources=[f"{root.rstrip('/')}/{preset.name}"],
                                              output_dir=output).model_dump()}))
    return deployments


def serve_all(preset_names: list[str] | None = None) -> None:
    """Register and serve the deployments of every preset (or of the named ones) in this process (blocks).

    Parameters
    ----------
    preset_names : list of str, optional
    """
    settings = PureSoundSettings()
    presets = load_presets(settings.presets_dir)
    if preset_names:
        presets = {name: presets[name] for name in preset_names}
    serve(*build_deployments(presets, settings))
