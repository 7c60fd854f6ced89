"""Every preset's deployments (:mod:`deployments.specs`), served from one process (``puresound serve``)."""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from deployments.specs import MANUAL, NIGHTLY, ON_UPLOAD, PART, deployment_specs
from flows.presets import ingest_flow, part_flow, preset_flow
from puresound.settings import PureSoundSettings
from puresound_core.presets import Preset, load_presets

__all__ = ["MANUAL", "NIGHTLY", "ON_UPLOAD", "PART", "build_deployments", "serve_all"]


def build_deployments(presets: dict[str, Preset], settings: PureSoundSettings) -> list:
    """Runner deployments of every preset (:func:`deployments.specs.deployment_specs`).

    Defaults are valid where the deployments run: absolute, from this process's settings
    (``PURESOUND_OUTPUT_DIR``, ``PURESOUND_NIGHTLY_SOURCE_ROOT``, ``PURESOUND_NIGHTLY_CRON``,
    ``PURESOUND_TIMEZONE``); schedules are on (``serve`` is run where the sources are real).

    Parameters
    ----------
    presets : dict of str to Preset
    settings : PureSoundSettings

    Returns
    -------
    list of prefect.deployments.runner.RunnerDeployment
    """
    output = settings.output_dir
    if not output.startswith("s3://"):
        output = str(Path(output).resolve())
    root = settings.nightly_source_root
    if not root.startswith("s3://"):
        root = str(Path(root).resolve())
    builders = {NIGHTLY: ingest_flow, ON_UPLOAD: preset_flow, MANUAL: preset_flow, PART: part_flow}
    deployments = []
    for spec in deployment_specs(presets, source_root=root, output_dir=output, cron=settings.nightly_cron,
                                 timezone=settings.timezone, schedules_active=True):
        flow_fn = builders[spec.name](presets[spec.preset])
        deployments.append(flow_fn.to_deployment(
            name=spec.name, entrypoint_type=EntrypointType.MODULE_PATH, tags=spec.tags,
            description=spec.description, parameters=spec.parameters,
            schedules=[Cron(spec.cron, timezone=spec.timezone)] if spec.cron else None))
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
