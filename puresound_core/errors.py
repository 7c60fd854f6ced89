"""The domain's error tree.

Every message names the file, the rule and the values, e.g.
``"episode12.mp3: rule 'duration_max' failed: 7412.3 s > 7200 s"``.
Library failures are wrapped with ``raise ... from err``.
"""

from __future__ import annotations


class PureSoundError(Exception):
    """Base class of every error raised by Pure Sound."""


class InvalidAudioError(PureSoundError):
    """A file or signal cannot be used as audio input.

    Parameters
    ----------
    message : str
        Human-readable reason; names the file and the value.
    rule : str, optional
        The validation rule this failure corresponds to (e.g. ``"decodable"``).
    path : str, optional
        The offending file.
    """

    def __init__(self, message: str, *, rule: str | None = None, path: str | None = None):
        super().__init__(message)
        self.rule = rule
        self.path = path


class DecodeTimeoutError(InvalidAudioError):
    """Decoding did not finish within its deadline (rule ``decode_timeout``)."""


class ValidationRuleFailed(PureSoundError):
    """One or more validation rules failed for a file.

    Parameters
    ----------
    report : puresound_core.validation.ValidationReport
        The full report; ``str(err)`` lists every failed rule.
    """

    def __init__(self, report):  # noqa: ANN001 - avoid an import cycle
        self.report = report
        super().__init__("; ".join(f.message for f in report.failures))


class EncodingError(PureSoundError):
    """An encoder or muxer failed, or an encoder setting is not supported."""


class StorageError(PureSoundError):
    """Reading from or writing to storage failed."""


class PresetError(PureSoundError):
    """A preset file or definition is invalid; the message names the file and the field path."""


class ComplianceError(PureSoundError):
    """An encoded rendition does not meet its loudness / true-peak / format targets."""
