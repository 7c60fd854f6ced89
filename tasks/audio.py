"""Audio tasks: fingerprint, inspect (validate + analyse), plan, render. Thin wrappers of puresound_core.

Each source is decoded once to inspect, at most once to plan, once to render every
rendition, and each rendition once to verify.

Cache keys are the content SHA-256 plus what changes the output (limits, preset
fingerprint and version, rendition, code version), never paths. DSP is deterministic, so
these tasks have no retries; results are persisted so a re-run does no audio work.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import av
from prefect import get_run_logger, task
from prefect.context import TaskRunContext

import puresound_core
from puresound.resources import resources
from puresound_core.analysis import AnalysisReport, Inspection
from puresound_core.audio import FFMPEG_VERSION
from puresound_core.errors import PureSoundError
from puresound_core.isolation import inspect_isolated, is_transient_failure
from puresound_core.policy import plan_rules, render_preset, rendition_plans, source_rules
from puresound_core.presets import Preset, Rendition
from puresound_core.render import RenditionPlan, RenditionResult, remove_abandoned_attempts
from puresound_core.storage import sha256_file
from puresound_core.validation import ValidationLimits

_log = logging.getLogger(__name__)


def _engine_source_hash() -> str:
    """First 12 hex digits of the SHA-256 of every ``.py`` file of ``puresound_core`` and ``tasks``.

    Upgraded engine code changes it, so cached results of older code are never served,
    even when nobody bumped ``__version__``.
    """
    digest = hashlib.sha256()
    for package in (Path(puresound_core.__file__).parent, Path(__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(path.relative_to(package.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


#: Enters every cache key and lineage row: new engine code or a new FFmpeg re-renders.
CODE_VERSION = (f"puresound-core {puresound_core.__version__} ({_engine_source_hash()}); PyAV {av.__version__}; "
                f"libavcodec {FFMPEG_VERSION}")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _named(step: str):
    """``task_run_name`` callable: the step and the file it works on, for the UI."""
    def name(parameters: dict) -> str:
        return f"{step} {Path(parameters['path']).name}"
    return name


def inspect_cache_key(sha256: str, file_name: str, limits: ValidationLimits) -> str:
    """Cache key of :func:`inspect` (also the name of its result record).

    Parameters
    ----------
    sha256 : str
        Source content hash.
    file_name : str
        The name the file is inspected under: the report's messages name it, so the same
        content under another name is its own entry.
    limits : ValidationLimits
        The preset's validation limits: other limits give another report, so another entry.

    Returns
    -------
    str
        Hex digest, with this code version in it.
    """
    return _digest("inspect", sha256, file_name, limits.model_dump_json(), CODE_VERSION)


def _inspect_key(_: TaskRunContext, p: dict) -> str:
    return inspect_cache_key(p["sha256"], Path(p["path"]).name, p["limits"])


def rendition_work_path(work_dir: str, sha256: str, preset: Preset, rendition: Rendition) -> Path:
    """Content-addressed place of a rendered file in the work area.

    Parameters
    ----------
    work_dir : str
    sha256 : str
    preset : Preset
    rendition : Rendition

    Returns
    -------
    Path
        ``{work_dir}/renders/{sha256[:2]}/{sha256}/{preset}-{version}-{fingerprint}/{rendition}.{ext}``
    """
    folder = f"{preset.name}-{preset.version}-{preset.fingerprint}"
    return (Path(work_dir) / "renders" / sha256[:2] / sha256 / folder
            / f"{rendition.name}.{rendition.encoder.extension}")


def render_cache_key(sha256: str, preset: Preset) -> str:
    """Cache key of :func:`render` for a content and a preset (and this code version).

    Parameters
    ----------
    sha256 : str
        Source content hash.
    preset : Preset

    Returns
    -------
    str
        Hex digest; also the name of the result record in Prefect's result storage.
    """
    return _digest("render", sha256, preset.name, preset.version, preset.fingerprint, CODE_VERSION)


def _render_key(_: TaskRunContext, p: dict) -> str:
    return render_cache_key(p["sha256"], p["preset"])


def render_is_cached(work_dir: str, sha256: str, preset: Preset) -> bool:
    """Whether :func:`render` of this content would be served from its cache, files included.

    Call it inside a flow run: the result record is looked up in that run's result storage.

    Parameters
    ----------
    work_dir : str
    sha256 : str
    preset : Preset

    Returns
    -------
    bool
        True when the result record exists, names this work area's files and they exist
        (False under ``PREFECT_TASKS_REFRESH_CACHE``).
    """
    from prefect.results import get_result_store
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

    expected = [rendition_work_path(work_dir, sha256, preset, r) for r in preset.renditions]
    if PREFECT_TASKS_REFRESH_CACHE.value() or not all(p.is_file() for p in expected):
        return False
    store = get_result_store().update_for_task(render)  # the task's own store
    try:
        record = store.read(render_cache_key(sha256, preset))
    except Exception as err:  # noqa: BLE001 - no record, or one that cannot be read: the task will find out
        _log.debug("%s: no cached renditions of %s: %s", sha256[:12], preset.name, err)
        return False
    return [Path(r.path) for r in record.result] == expected  # another work area's record is rendered again


@task(name="fingerprint", task_run_name=_named("fingerprint"))
def fingerprint(path: str) -> str:
    """SHA-256 of a source file's bytes: the identity every cache key starts from.

    Parameters
    ----------
    path : str

    Returns
    -------
    str
        Hex digest.

    Raises
    ------
    StorageError
        If the file cannot be read.
    """
    return sha256_file(path)


class TransientInspectionError(PureSoundError):
    """The isolated decode failed in a way the machine may have caused (see ``is_transient_failure``).

    Raised so that the verdict is not cached; ``inspection`` holds the failed report.
    """

    def __init__(self, inspection: Inspection):
        self.inspection = inspection
        super().__init__("; ".join(r.message for r in inspection.validation.failures))

    def __reduce__(self):  # Prefect persists a failed task's exception: rebuild it from its inspection
        return (type(self), (self.inspection,))


@task(name="inspect", task_run_name=_named("inspect"), cache_key_fn=_inspect_key, persist_result=True,
      retries=1, retry_delay_seconds=1)
def inspect(path: str, sha256: str, limits: ValidationLimits) -> Inspection:
    """Every validation rule and the analysis of one file, in one decode in an isolated child process.

    Untrusted media is probed and decoded by :func:`puresound_core.isolation.inspect_isolated`:
    a decoder that crashes, hangs or runs out of memory fails rule ``decodable`` /
    ``decode_timeout`` for this file, and the batch goes on. The same decode feeds the
    loudness meter, the true-peak meter and the content analyser.

    Parameters
    ----------
    path : str
    sha256 : str
        Content hash; with the file name, ``limits`` and the code version, the cache key.
    limits : ValidationLimits

    Returns
    -------
    Inspection
        ``analysis`` is ``None`` when a rule failed.

    Raises
    ------
    TransientInspectionError
        When the child timed out, was killed from outside or failed outside the decoder:
        such a verdict is not cached, and the task is tried once more.
    """
    result = inspect_isolated(path, limits)
    if is_transient_failure(result.validation):
        raise TransientInspectionError(result)
    return result


def plan_cache_key(sha256: str, file_name: str, preset: Preset) -> str:
    """Cache key of :func:`plan` (also the name of its result record); plan problems name the file.

    Parameters
    ----------
    sha256 : str
        Source content hash.
    file_name : str
        The name the file is planned under.
    preset : Preset
        Its name, version and fingerprint enter the key.

    Returns
    -------
    str
        Hex digest, with this code version in it.
    """
    return _digest("plan", sha256, file_name, preset.name, preset.version, preset.fingerprint, CODE_VERSION)


def _plan_key(_: TaskRunContext, p: dict) -> str:
    return plan_cache_key(p["sha256"], Path(p["path"]).name, p["preset"])


def rejection_is_cached(sha256: str, file_name: str, preset: Preset) -> bool:
    """Whether the pipeline would reject this content from cached verdicts alone, with no audio work.

    That is: :func:`inspect`'s cached report fails a validation rule, or its probe fails
    :func:`~puresound_core.policy.source_rules`, or :func:`plan`'s cached plans fail
    :func:`~puresound_core.policy.plan_rules`. Call it inside a flow run: the records are
    looked up in that run's result storage.

    Parameters
    ----------
    sha256 : str
        Source content hash, as lineage knows it for the file's URI and ETag.
    file_name : str
        The name the pipeline inspects the file under (:func:`inspect_cache_key`).
    preset : Preset
        Its validation limits and rules decide the verdict.

    Returns
    -------
    bool
        False when in doubt (a record missing or unreadable, ``PREFECT_TASKS_REFRESH_CACHE``)
        and when the file would be rendered. Never raises: every doubt is left to the tasks.
    """
    from prefect.results import get_result_store
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

    if PREFECT_TASKS_REFRESH_CACHE.value():
        return False
    try:
        inspection = get_result_store().update_for_task(inspect).read(
            inspect_cache_key(sha256, file_name, preset.validation)).result
        validation = inspection.validation
        if not validation.passed or source_rules(preset, validation.probe):
            return True
        plans = get_result_store().update_for_task(plan).read(plan_cache_key(sha256, file_name, preset)).result
    except Exception as err:  # noqa: BLE001 - no record, or one that cannot be read: the tasks will find out
        _log.debug("%s (%s): no cached verdict: %s", file_name, sha256[:12], err)
        return False
    return bool(plan_rules(preset, plans))


@task(name="plan-renditions", task_run_name=_named("plan"), cache_key_fn=_plan_key, persist_result=True)
def plan(path: str, sha256: str, preset: Preset, analysis: AnalysisReport) -> list[RenditionPlan]:
    """Plan every rendition of the preset (:func:`puresound_core.policy.rendition_plans`).

    Parameters
    ----------
    path : str
    sha256 : str
        Content hash; with the preset and the code version, the cache key.
    preset : Preset
    analysis : AnalysisReport

    Returns
    -------
    list of RenditionPlan
        Their ``problems`` are verdicts known before rendering.
    """
    return rendition_plans(preset, path, analysis)


@task(name="render-renditions", task_run_name=_named("render"), cache_key_fn=_render_key, persist_result=True)
def render(path: str, sha256: str, preset: Preset, analysis: AnalysisReport, work_dir: str,
           plans: list[RenditionPlan]) -> list[RenditionResult]:
    """Render, encode and verify every rendition of the preset into the work area, from one decode.

    :func:`puresound_core.policy.render_preset`; a cached result points at files in the work
    area, and :func:`render_cached` renders again when one of them has been removed since.

    Parameters
    ----------
    path : str
        Local source file.
    sha256 : str
        Its content hash; with the preset (name, version, fingerprint) and code version, the
        cache key.
    preset : Preset
    analysis : AnalysisReport
    work_dir : str
        Work area; the files go to :func:`rendition_work_path`.
    plans : list of RenditionPlan
        From :func:`plan` (not part of the cache key: a function of the others).

    Returns
    -------
    list of RenditionResult
        In the order of ``preset.renditions``; ``verification.passed`` says whether each may
        be published.

    Raises
    ------
    InvalidAudioError, EncodingError
        From :func:`puresound_core.render.render_renditions`.
    """
    outs = [rendition_work_path(work_dir, sha256, preset, rendition) for rendition in preset.renditions]
    return render_preset(preset, path, analysis, plans, outs)


def render_cached(path: str, sha256: str, preset: Preset, analysis: AnalysisReport, work_dir: str,
                  plans: list[RenditionPlan]) -> list[RenditionResult]:
    """:func:`render`, refreshing the cache when a cached result's files are not in this work area.

    With ``PURESOUND_ENCODE_CONCURRENCY_LIMIT`` naming a Prefect global concurrency limit, every
    render holds one of its slots (one source's renditions are encoded in one thread), which
    caps encoding across all runs and workers.

    Parameters and return value are those of :func:`render`; ``analysis`` and ``plans`` may
    come wrapped in Prefect's ``quote`` (passed on as they are; the task unwraps them).
    """
    limit = resources().settings.encode_concurrency_limit
    if limit:
        from prefect.concurrency.sync import concurrency

        with concurrency(limit, occupy=1):
            return _render_or_refresh(path, sha256, preset, analysis, work_dir, plans)
    return _render_or_refresh(path, sha256, preset, analysis, work_dir, plans)


def _render_or_refresh(path: str, sha256: str, preset: Preset, analysis: AnalysisReport, work_dir: str,
                       plans: list[RenditionPlan]) -> list[RenditionResult]:
    # Called under the pipeline's content lock: no live render of this content writes here.
    folder = rendition_work_path(work_dir, sha256, preset, preset.renditions[0]).parent
    removed = remove_abandoned_attempts(folder)
    if removed:
        get_run_logger().warning("removed %d partial files left by a render that died: %s", len(removed),
                                 ", ".join(p.name for p in removed))
    results = render(path, sha256, preset, analysis, work_dir, plans)
    # Rendered again when a file is gone, or when the cached result is another work area's (the
    # key holds no paths: two work areas sharing Prefect's result storage share cache entries).
    expected = [rendition_work_path(work_dir, sha256, preset, r) for r in preset.renditions]
    if [Path(r.path) for r in results] != expected or not all(p.exists() for p in expected):
        results = render.with_options(refresh_cache=True)(path, sha256, preset, analysis, work_dir, plans)
    return results
