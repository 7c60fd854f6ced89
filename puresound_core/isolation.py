"""Probe and validate untrusted media in a child process, so a decoder crash or hang costs one file.

FFmpeg runs in-process through PyAV: a native crash (SIGSEGV in a demuxer, a decoder or
PyAV itself) kills the whole process, a decoder stuck inside one FFmpeg call cannot be
interrupted from Python, and a hostile header can make a decoder allocate without bound.
:func:`validate_isolated` and :func:`probe_isolated` run :func:`~puresound_core.validation.validate_file`
/ :func:`~puresound_core.audio.probe` in a child process under a wall-clock deadline and an
address-space limit, and turn every way the child can fail into a named rule:

==========================  ===================  =============================================
child outcome               rule                 message
==========================  ===================  =============================================
killed by a signal          ``decodable``        ``decoder process killed by SIGSEGV``
out of memory               ``decodable``        names the address-space limit in bytes
still running at deadline   ``decode_timeout``   names the deadline; the child is killed
==========================  ===================  =============================================

Children are forked from a ``multiprocessing`` *forkserver* that has already imported
every module a child needs (:data:`PRELOAD_MODULES`), so a file costs a fork plus a
few pickles, not an interpreter start: about 7 ms per file on a 2-core machine (a
validated one-sample WAV: 9 ms isolated against 2 ms in-process), against ~0.5 s for a
fresh interpreter importing numpy and PyAV. Plain ``fork`` is never used (callers run in thread pools, e.g.
Prefect's). The caller's ``__main__`` module is not re-imported in the children (unlike
multiprocessing's default), so a Prefect or CLI entry point does not load into them.
Calls are thread-safe: each has its own child and pipe.

The report crosses back as JSON (``model_dump_json`` / ``model_validate_json``).
POSIX only (forkserver, ``resource.RLIMIT_AS``).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import connection, forkserver, popen_forkserver, spawn, util
from multiprocessing.context import reduction, set_spawning_popen
from pathlib import Path
from typing import Literal

from .audio import ProbeResult, probe
from .cancel import check_stop, stop_requested
from .errors import DecodeTimeoutError, InvalidAudioError
from .validation import RuleResult, ValidationLimits, ValidationReport, validate_file

#: Default address-space limit of a child (``RLIMIT_AS``): 4 GiB. A forked child already
#: maps ~0.65 GiB of address space (interpreter, numpy, FFmpeg libraries, and the scipy,
#: librosa and numba/LLVM of :data:`PRELOAD_MODULES`; measured with 2 BLAS threads); block-wise
#: validation and analysis need tens of MiB more, so only a runaway allocation reaches the limit.
DEFAULT_MEMORY_LIMIT_BYTES = 4 * 1024**3

#: Added to ``limits.decode_timeout_s`` for the default deadline of :func:`validate_isolated`:
#: child start-up, probing and building the report.
STARTUP_ALLOWANCE_S = 5.0

#: Default deadline of :func:`probe_isolated`.
DEFAULT_PROBE_TIMEOUT_S = 30.0

Fault = Literal["segfault", "pyav_planar_8ch", "hang", "oom"]


# --------------------------------------------------------------------------- child side


@dataclass(frozen=True)
class _Job:
    """What a child does: ``kind`` on ``path``; ``fault`` is a test seam run first in the child."""

    kind: Literal["validate", "inspect", "probe"]
    path: str
    limits_json: str | None
    memory_limit_bytes: int | None
    fault: Fault | None = None


def _limit_memory(limit_bytes: int | None) -> None:
    """Cap the child's address space (soft and, where allowed, hard ``RLIMIT_AS``)."""
    if limit_bytes is None:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (soft, soft))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _inject(fault: Fault | None, memory_limit_bytes: int | None) -> None:
    """Test seam: make the child fail the way untrusted media can make a decoder fail."""
    if fault is None:
        return
    import ctypes

    if fault == "segfault":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif fault == "pyav_planar_8ch":
        import av

        # The PyAV 18 bug audio.iter_blocks avoids: planes of an 8-channel planar frame.
        av.AudioFrame(format="fltp", layout="7.1", samples=1024).to_ndarray()
    elif fault == "hang":
        ctypes.CDLL(None).sleep(3600)  # stuck inside one native call, as a looping decoder is
    elif fault == "oom":
        bytearray(2 * (memory_limit_bytes or DEFAULT_MEMORY_LIMIT_BYTES))


def _child(conn: connection.Connection, job: _Job) -> None:
    """Child entry point: run the job and send one tagged JSON message back."""
    try:
        _limit_memory(job.memory_limit_bytes)
        _inject(job.fault, job.memory_limit_bytes)
        if job.kind == "validate":
            limits = ValidationLimits.model_validate_json(job.limits_json) if job.limits_json else None
            report = validate_file(job.path, limits)
            if job.memory_limit_bytes is not None:
                report = _name_memory_limit(report, job.memory_limit_bytes)
            message = b"R" + report.model_dump_json().encode()
        elif job.kind == "inspect":
            from .analysis import inspect_file

            limits = ValidationLimits.model_validate_json(job.limits_json) if job.limits_json else None
            inspection = inspect_file(job.path, limits)
            if job.memory_limit_bytes is not None:
                inspection = inspection.model_copy(update={
                    "validation": _name_memory_limit(inspection.validation, job.memory_limit_bytes)})
            # JSON with -Infinity allowed (measurements of silence are -inf); never pickle: a
            # decoder compromised by hostile media must not get code run in the parent.
            message = b"I" + json.dumps(inspection.model_dump(mode="python"), allow_nan=True).encode()
        else:
            try:
                message = b"P" + probe(job.path).model_dump_json().encode()
            except InvalidAudioError as err:
                failure = RuleResult(rule=err.rule or "decodable", passed=False, message=str(err))
                message = b"E" + failure.model_dump_json().encode()
    except MemoryError:
        message = b"M"
    except BaseException as err:  # noqa: BLE001 - anything else is reported, not lost in stderr
        message = b"X" + f"{type(err).__name__}: {err}".encode()
    conn.send_bytes(message)
    conn.close()


def _name_memory_limit(report: ValidationReport, memory_limit_bytes: int) -> ValidationReport:
    """Add the address-space limit to failures FFmpeg reported as ENOMEM."""
    if not any("Cannot allocate memory" in r.message for r in report.failures):
        return report
    rules = [r.model_copy(update={"message": f"{r.message} (decoder process address-space limit "
                                             f"{memory_limit_bytes} bytes)"})
             if not r.passed and "Cannot allocate memory" in r.message else r for r in report.rules]
    return report.model_copy(update={"rules": rules})


# --------------------------------------------------------------------------- parent side


class _NoMainPopen(popen_forkserver.Popen):
    """forkserver ``Popen`` that does not ask the child to re-import the caller's ``__main__``.

    multiprocessing re-imports ``__main__`` (by module name or path) in every spawn /
    forkserver child so that pickled functions defined there resolve; our child's target
    lives in this module, and a Prefect worker's or CLI's ``__main__`` would otherwise load
    Prefect into every child. Same as CPython 3.11-3.13 ``popen_forkserver.Popen._launch``
    but for the two dropped keys.
    """

    def _launch(self, process_obj):  # noqa: ANN001
        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_name", None)
        prep_data.pop("init_main_from_path", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _IsolatedProcess(multiprocessing.get_context("forkserver").Process):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj):  # noqa: ANN001, N802 - multiprocessing's hook name
        return _NoMainPopen(process_obj)


#: Imported once by the forkserver, so that no child imports them again. The analysis
#: imports scipy.signal on first use, librosa attaches its submodules lazily (with numba's
#: typing modules, ~1000 modules in all) and PyAV its subtitle module on the first open:
#: forked without them, each file's child imported them again. Inspecting a 3-minute 8 kHz
#: speech WAV took 4.1-4.9 s, and 0.7-0.8 s with them preloaded (2-core machine; the
#: forkserver's own start, once per process, takes ~5 s either way).
#: ``test_the_forkserver_preloads_every_module_an_inspection_imports`` keeps it complete;
#: :mod:`puresound_core._forkserver_preload` imports them, one failure never the others.
PRELOAD_MODULES = ("puresound_core.isolation", "puresound_core.analysis", "scipy.signal", "av.subtitles.stream",
                   "librosa.core.audio", "librosa.core.spectrum", "librosa.filters", "librosa.feature.rhythm",
                   "librosa.feature.spectral", "librosa.onset")

_setup_lock = threading.Lock()
_setup_done = False


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver context, asking (once, before it starts) for our modules to be preloaded."""
    global _setup_done
    ctx = multiprocessing.get_context("forkserver")
    with _setup_lock:
        if not _setup_done:
            # Only takes effect if no forkserver is running yet in this process.
            ctx.set_forkserver_preload(["puresound_core._forkserver_preload"])  # PRELOAD_MODULES, each alone
            _setup_done = True
    return ctx


@dataclass(frozen=True)
class _Outcome:
    kind: Literal["message", "signal", "exit", "timeout"]
    payload: bytes = b""
    code: int = 0
    elapsed_s: float = 0.0


def _run(job: _Job, timeout_s: float) -> _Outcome:
    """Run ``job`` in a fresh forkserver child; kill it at ``timeout_s``."""
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = _IsolatedProcess(target=_child, args=(sender, job), daemon=True,
                            name=f"puresound-isolated-{job.kind}")
    try:
        proc.start()
        sender.close()
        started = time.monotonic()
        deadline = started + timeout_s
        payload: bytes | None = None
        while True:
            remaining = deadline - time.monotonic()
            # Short slices, so that a stop request (SIGTERM) ends the child at once.
            ready = connection.wait([receiver, proc.sentinel], timeout=min(max(0.0, remaining), 0.25))
            if not ready and stop_requested():
                proc.kill()
                proc.join()
                check_stop()  # raises Cancelled
            if receiver in ready or (ready and receiver.poll()):
                try:
                    payload = receiver.recv_bytes()
                except EOFError:
                    payload = None
                break
            if proc.sentinel in ready:
                break
            if time.monotonic() >= deadline:
                proc.kill()
                proc.join()
                return _Outcome("timeout", elapsed_s=time.monotonic() - started)
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
        if proc.exitcode is None:  # sent its message but will not exit: stop it
            proc.kill()
            proc.join()
        elapsed = time.monotonic() - started
        if payload is not None:
            return _Outcome("message", payload=payload, elapsed_s=elapsed)
        if proc.exitcode is not None and proc.exitcode < 0:
            return _Outcome("signal", code=-proc.exitcode, elapsed_s=elapsed)
        return _Outcome("exit", code=proc.exitcode or 0, elapsed_s=elapsed)
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
            proc.join()
        proc.close()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _failure(outcome: _Outcome, name: str, *, timeout_s: float, memory_limit_bytes: int | None) -> RuleResult:
    """The failed rule a child that sent no usable result stands for."""
    if outcome.kind == "timeout":
        return RuleResult(rule="decode_timeout", passed=False, measured=round(outcome.elapsed_s, 3),
                          limit=timeout_s,
                          message=f"{name}: rule 'decode_timeout' failed: decoder process still running "
                                  f"after {timeout_s:g} s limit, killed")
    if outcome.kind == "signal":
        detail = f"decoder process killed by {_signal_name(outcome.code)}"
        if outcome.code == signal.SIGKILL and memory_limit_bytes is not None:
            detail += " (killed from outside: the system may be out of memory)"
        return RuleResult(rule="decodable", passed=False, measured=_signal_name(outcome.code), limit=None,
                          message=f"{name}: rule 'decodable' failed: {detail}")
    if outcome.kind == "message" and outcome.payload.startswith(b"M"):
        return RuleResult(rule="decodable", passed=False, measured="out of memory", limit=memory_limit_bytes,
                          message=f"{name}: rule 'decodable' failed: decoder process ran out of memory "
                                  f"(address-space limit {memory_limit_bytes} bytes)")
    if outcome.kind == "message" and outcome.payload.startswith(b"X"):
        detail = outcome.payload[1:].decode(errors="replace")
        if memory_limit_bytes is not None:  # e.g. "failed to map segment": a library no longer fits
            detail += f"; address-space limit {memory_limit_bytes} bytes"
        return RuleResult(rule="decodable", passed=False, measured=None, limit=memory_limit_bytes,
                          message=f"{name}: rule 'decodable' failed: decoder process failed ({detail})")
    return RuleResult(rule="decodable", passed=False, measured=outcome.code, limit=None,
                      message=f"{name}: rule 'decodable' failed: decoder process exited with status "
                              f"{outcome.code} without a result")


def _validate_isolated(path: str | os.PathLike, limits: ValidationLimits | None, *, timeout_s: float | None,
                       memory_limit_bytes: int | None, fault: Fault | None, kind: str = "validate"):
    limits = limits or ValidationLimits()
    p = Path(path)
    budget = limits.decode_timeout_s + STARTUP_ALLOWANCE_S if timeout_s is None else timeout_s
    job = _Job(kind=kind, path=str(p), limits_json=limits.model_dump_json(),
               memory_limit_bytes=memory_limit_bytes, fault=fault)
    outcome = _run(job, budget)
    if outcome.kind == "message" and outcome.payload.startswith(b"R"):
        return ValidationReport.model_validate_json(outcome.payload[1:])
    if outcome.kind == "message" and outcome.payload.startswith(b"I"):
        from .analysis import Inspection

        return Inspection.model_validate(json.loads(outcome.payload[1:]))
    size = p.stat().st_size if p.is_file() else 0
    size_ok = size <= limits.file_size_max_bytes
    rules = [
        RuleResult(rule="file_size_max", passed=size_ok, measured=size, limit=limits.file_size_max_bytes,
                   message=f"{p.name}: rule 'file_size_max' {'passed' if size_ok else 'failed'}: {size} bytes "
                           f"{'<=' if size_ok else '>'} {limits.file_size_max_bytes} bytes"),
        _failure(outcome, p.name, timeout_s=budget, memory_limit_bytes=memory_limit_bytes),
    ]
    return ValidationReport(path=str(p), passed=False, rules=rules)


def validate_isolated(
    path: str | os.PathLike,
    limits: ValidationLimits | None = None,
    *,
    timeout_s: float | None = None,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
) -> ValidationReport:
    """:func:`~puresound_core.validation.validate_file` in a child process: crashes and hangs become rules.

    Parameters
    ----------
    path : str or path-like
    limits : ValidationLimits, optional
        Defaults to ``ValidationLimits()``.
    timeout_s : float > 0, optional
        Wall-clock deadline of the child, from its start to its report; the child is
        killed (SIGKILL) when it passes, whatever FFmpeg call it is in. Defaults to
        ``limits.decode_timeout_s + STARTUP_ALLOWANCE_S`` (5 s). The first call in a
        process also starts the forkserver, which imports :data:`PRELOAD_MODULES` (~5 s on a
        2-core machine), outside this deadline.
    memory_limit_bytes : int > 0 or None
        Address-space limit of the child (``RLIMIT_AS``), default
        :data:`DEFAULT_MEMORY_LIMIT_BYTES` (4 GiB); ``None`` for no limit.

    Returns
    -------
    ValidationReport
        The child's report when it finished. Otherwise a report with ``probe`` and
        ``stats`` set to ``None`` and two rules: ``file_size_max`` (measured here) and the
        failure: ``decodable`` ("decoder process killed by SIGSEGV", "ran out of memory
        (address-space limit N bytes)") or ``decode_timeout`` (names the deadline).
        Never raises for bad input.

    Notes
    -----
    Thread-safe; each call forks its own child from the shared forkserver (per-file
    overhead ~7 ms). Never uses plain ``fork``.

    References
    ----------
    Python ``multiprocessing`` forkserver start method; POSIX ``setrlimit(RLIMIT_AS)``.
    """
    return _validate_isolated(path, limits, timeout_s=timeout_s, memory_limit_bytes=memory_limit_bytes, fault=None)


def inspect_isolated(
    path: str | os.PathLike,
    limits: ValidationLimits | None = None,
    *,
    timeout_s: float | None = None,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
):
    """:func:`~puresound_core.analysis.inspect_file` in a child process: validate and analyse in one decode.

    Parameters
    ----------
    path, limits, timeout_s, memory_limit_bytes
        As :func:`validate_isolated`; the deadline covers the analysis too.

    Returns
    -------
    puresound_core.analysis.Inspection
        ``analysis`` is ``None`` when a rule failed, or when the child crashed, hung or ran
        out of memory (then ``validation`` is the report :func:`validate_isolated` gives).
        Never raises for bad input.
    """
    from .analysis import Inspection

    result = _validate_isolated(path, limits, timeout_s=timeout_s, memory_limit_bytes=memory_limit_bytes,
                                fault=None, kind="inspect")
    return result if isinstance(result, Inspection) else Inspection(validation=result)


def probe_isolated(
    path: str | os.PathLike,
    *,
    timeout_s: float = DEFAULT_PROBE_TIMEOUT_S,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
) -> ProbeResult:
    """:func:`~puresound_core.audio.probe` in a child process.

    Parameters
    ----------
    path : str or path-like
    timeout_s : float > 0
        Wall-clock deadline of the child (default 30 s); it is killed when it passes.
    memory_limit_bytes : int > 0 or None
        Address-space limit of the child, as in :func:`validate_isolated`.

    Returns
    -------
    ProbeResult

    Raises
    ------
    InvalidAudioError
        As :func:`~puresound_core.audio.probe` (same ``rule``), and ``rule="decodable"``
        when the child was killed by a signal, ran out of memory or failed otherwise.
    DecodeTimeoutError
        ``rule="decode_timeout"`` when the child passed its deadline.
    """
    p = Path(path)
    job = _Job(kind="probe", path=str(p), limits_json=None, memory_limit_bytes=memory_limit_bytes)
    outcome = _run(job, timeout_s)
    if outcome.kind == "message" and outcome.payload.startswith(b"P"):
        return ProbeResult.model_validate_json(outcome.payload[1:])
    if outcome.kind == "message" and outcome.payload.startswith(b"E"):
        failure = RuleResult.model_validate_json(outcome.payload[1:])
    else:
        failure = _failure(outcome, p.name, timeout_s=timeout_s, memory_limit_bytes=memory_limit_bytes)
    error = DecodeTimeoutError if failure.rule == "decode_timeout" else InvalidAudioError
    raise error(failure.message, rule=failure.rule, path=str(p))


def is_transient_failure(report: ValidationReport) -> bool:
    """Whether a failed isolated validation may say more about the machine than about the file.

    A deadline passed (``decode_timeout``: a busy machine is slow too), a child killed from
    outside (SIGKILL: the system's out-of-memory killer) or a child that failed outside the
    decoder ("decoder process failed": e.g. a library that no longer fits in memory) can pass
    on another try; a decoder that crashed (SIGSEGV) or broke its own memory limit will not.
    Callers should not cache such a verdict.

    Parameters
    ----------
    report : ValidationReport

    Returns
    -------
    bool
    """
    for rule in report.failures:
        if rule.rule == "decode_timeout":
            return True
        if rule.rule == "decodable" and ("killed by SIGKILL" in rule.message
                                         or "decoder process failed (" in rule.message):
            return True
    return False

