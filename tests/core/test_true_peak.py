"""True peak (ITU-R BS.1770-4 Annex 2) against EBU Tech 3341 cases 15-19."""

from __future__ import annotations

import math

import numpy as np
import pytest

from puresound_core.true_peak import TruePeakMeter, true_peak_dbtp
from tests.conftest import sine

# Tech 3341 (2016) cases 15-19: (fs / divisor) sine, peak amplitude, phase (deg) -> dBTP.
CASES = {
    15: (4, 0.50, 0.0, -6.0),
    16: (4, 0.50, 45.0, -6.0),
    17: (6, 0.50, 60.0, -6.0),
    18: (8, 0.50, 67.5, -6.0),
    19: (4, 1.41, 45.0, 3.0),
}


def _case_signal(case: int, sample_rate_hz: int) -> np.ndarray:
    divisor, amplitude, phase_deg, _ = CASES[case]
    audio = sine(20 * math.log10(amplitude), 3.0, sample_rate_hz, freq_hz=sample_rate_hz / divisor,
                 phase_rad=math.radians(phase_deg))
    # 20 ms raised-cosine fades: a tone switched on at full level is broadband, and its onset
    # alone has inter-sample overshoot that is not the steady-state peak the case measures.
    fade = int(0.02 * sample_rate_hz)
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))).astype(np.float32)
    audio[:, :fade] *= ramp
    audio[:, -fade:] *= ramp[::-1]
    return audio


@pytest.mark.parametrize("sample_rate_hz", [44100, 48000])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tech_3341_true_peak_cases_15_to_19(case, sample_rate_hz):
    expected = CASES[case][3]
    measured = true_peak_dbtp(_case_signal(case, sample_rate_hz))
    assert expected - 0.4 <= measured <= expected + 0.2


def test_inter_sample_peak_exceeds_sample_peak():
    audio = _case_signal(19, 48000)
    sample_peak = 20 * math.log10(np.abs(audio).max())
    assert sample_peak == pytest.approx(0.0, abs=0.05)  # 1.41 x sin(45 deg) = 0.997
    assert true_peak_dbtp(audio) > sample_peak + 2.5


def test_streaming_equals_one_shot_and_state_survives_block_borders():
    audio = _case_signal(16, 48000)
    meter = TruePeakMeter(2)
    for start in range(0, audio.shape[1], 777):
        meter.process(audio[:, start:start + 777])
    assert 20 * math.log10(meter.true_peak) == pytest.approx(true_peak_dbtp(audio), abs=1e-6)


def test_quiet_blocks_after_the_peak_are_pruned_without_changing_the_result():
    loud = _case_signal(19, 48000)
    quiet = loud * 0.01
    both = np.concatenate([loud, quiet], axis=1)
    assert true_peak_dbtp(both) == pytest.approx(true_peak_dbtp(loud), abs=1e-6)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_envelope_of_an_empty_or_tiny_block(n):
    from puresound_core.true_peak import oversampled_envelope

    history = np.zeros((2, 11), dtype=np.float32)
    block = np.full((2, n), 0.5, dtype=np.float32)
    envelope = oversampled_envelope(np.concatenate([history, block], axis=1))
    assert envelope.shape == (2, n)
    if n:
        assert envelope.max() >= 0.5
    assert oversampled_envelope(np.zeros((2, 5), dtype=np.float32)).shape == (2, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 11, 12, 4097])
def test_envelope_is_the_annex_filter_applied_by_definition(dtype, n):
    # Each interpolated value is the 12-tap dot product of Annex 2, Table 1, written out here
    # with np.convolve in float64; the block computation may differ only by float32 rounding.
    from puresound_core.true_peak import BS1770_TRUE_PEAK_PHASES, oversampled_envelope

    rng = np.random.default_rng(n)
    x = rng.uniform(-1, 1, (3, 11 + n)).astype(dtype)
    expected = np.abs(x[:, 11:]).astype(np.float64)
    for c in range(3):
        for phase in BS1770_TRUE_PEAK_PHASES:
            expected[c] = np.maximum(expected[c], np.abs(np.convolve(x[c].astype(np.float64), phase, "valid")))
    envelope = oversampled_envelope(x)
    assert envelope.dtype == np.result_type(dtype, np.float32) and envelope.shape == (3, n)
    np.testing.assert_allclose(envelope, expected, atol=1e-6 if dtype == np.float32 else 1e-12)
