"""BS.1770-4 loudness against EBU Tech 3341 / 3342 cases synthesised from their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from puresound_core.errors import InvalidAudioError
from puresound_core.loudness import (
    LoudnessMeter,
    integrated_loudness,
    k_weighting_sos,
    measure_loudness,
)
from tests.conftest import pink_noise, sine

RATES = [44100, 48000]


def _sequence(sample_rate_hz: int, *segments: tuple[float, float]) -> np.ndarray:
    return np.concatenate([sine(level, seconds, sample_rate_hz) for level, seconds in segments], axis=1)


# EBU Tech 3341 (2016) Table 1, cases 1-5: stereo 1 kHz sine sequences (level dBFS, seconds).
TECH_3341_INTEGRATED = {
    1: ([(-23, 20)], -23.0),
    2: ([(-33, 20)], -33.0),
    3: ([(-36, 10), (-23, 60), (-36, 10)], -23.0),
    4: ([(-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)], -23.0),
    5: ([(-26, 20), (-20, 20.1), (-26, 20)], -23.0),
}


@pytest.mark.parametrize("sample_rate_hz", RATES)
@pytest.mark.parametrize("case", sorted(TECH_3341_INTEGRATED))
def test_tech_3341_integrated_cases_1_to_5(case, sample_rate_hz):
    segments, expected = TECH_3341_INTEGRATED[case]
    report = measure_loudness(_sequence(sample_rate_hz, *segments), sample_rate_hz=sample_rate_hz)
    assert report.integrated_lufs == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("sample_rate_hz", RATES)
def test_tech_3341_case_6_five_channels(sample_rate_hz):
    # L, R at -28 dBFS; C at -24 dBFS; Ls, Rs at -30 dBFS (weighted 1.41): -23.0 LUFS.
    audio = np.concatenate([
        sine(-28, 20, sample_rate_hz, channels=2),
        sine(-24, 20, sample_rate_hz, channels=1),
        sine(-30, 20, sample_rate_hz, channels=2),
    ])
    assert integrated_loudness(audio, sample_rate_hz=sample_rate_hz) == pytest.approx(-23.0, abs=0.1)


# Tech 3341 case 9: 20 x (1.34 s at -20 dBFS + 1.66 s at -30 dBFS): S = -23.0 +-0.1 LUFS after 3 s.
# Tech 3341 case 12: 25 x (0.18 s at -20 dBFS + 0.22 s at -30 dBFS): M = -23.0 +-0.1 LUFS after 0.4 s.
SLIDING_WINDOW_CASES = {
    9: ([(-20, 1.34), (-30, 1.66)], 20, "short_term_lufs", 500),
    12: ([(-20, 0.18), (-30, 0.22)], 25, "momentary_lufs", 90),
}


@pytest.mark.parametrize("sample_rate_hz", RATES)
@pytest.mark.parametrize("case", sorted(SLIDING_WINDOW_CASES))
def test_tech_3341_cases_9_and_12_sliding_loudness_is_constant(case, sample_rate_hz):
    period, repeats, series, min_windows = SLIDING_WINDOW_CASES[case]
    audio = np.concatenate([_sequence(sample_rate_hz, *period) for _ in range(repeats)], axis=1)
    meter = LoudnessMeter(sample_rate_hz=sample_rate_hz, channels=2)
    meter.process(audio)
    values = getattr(meter, series)()
    assert values.size > min_windows
    assert np.all(np.abs(values + 23.0) <= 0.1)


# EBU Tech 3342 (2016) cases 1-4: stereo 1 kHz sine sequences; expected LRA +-1 LU.
TECH_3342_LRA = {
    1: ([(-20, 20), (-30, 20)], 10.0),
    2: ([(-20, 20), (-15, 20)], 5.0),
    3: ([(-40, 20), (-20, 20)], 20.0),
    4: ([(-50, 20), (-35, 20), (-20, 20), (-35, 20), (-50, 20)], 15.0),
}


@pytest.mark.parametrize("sample_rate_hz", RATES)
@pytest.mark.parametrize("case", sorted(TECH_3342_LRA))
def test_tech_3342_lra_cases_1_to_4(case, sample_rate_hz):
    segments, expected = TECH_3342_LRA[case]
    report = measure_loudness(_sequence(sample_rate_hz, *segments), sample_rate_hz=sample_rate_hz)
    assert report.lra_lu == pytest.approx(expected, abs=1.0)


def test_k_weighting_matches_bs1770_table_at_48k():
    # ITU-R BS.1770-4 Annex 1, Tables 1 and 2 (48 kHz).
    sos = k_weighting_sos(48000)
    np.testing.assert_allclose(sos[0, :3], [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-8)
    np.testing.assert_allclose(sos[0, 4:], [-1.69065929318241, 0.73248077421585], atol=1e-8)
    np.testing.assert_allclose(sos[1, 4:], [-1.99004745483398, 0.99007225036621], atol=1e-8)


@pytest.mark.parametrize("gain_db", [-12.0, -3.5, 6.0])
def test_gain_moves_loudness_by_the_same_number_of_lu(gain_db):
    noise = pink_noise(12, 48000, level_dbfs=-30)
    before = integrated_loudness(noise, sample_rate_hz=48000)
    after = integrated_loudness(noise * 10 ** (gain_db / 20), sample_rate_hz=48000)
    assert after - before == pytest.approx(gain_db, abs=0.01)


def test_block_size_does_not_change_the_result():
    audio = pink_noise(10, 44100, seed=3)
    whole = measure_loudness(audio, sample_rate_hz=44100)
    blocks = [audio[:, i:i + 1234] for i in range(0, audio.shape[1], 1234)]
    streamed = measure_loudness(iter(blocks), sample_rate_hz=44100, channels=2)
    assert streamed.integrated_lufs == pytest.approx(whole.integrated_lufs, abs=1e-6)
    assert streamed.lra_lu == pytest.approx(whole.lra_lu, abs=1e-6)
    assert streamed.true_peak_dbtp == pytest.approx(whole.true_peak_dbtp, abs=1e-6)


def test_input_shorter_than_a_gating_block_has_a_reason_not_an_exception():
    report = measure_loudness(sine(-20, 0.3, 48000), sample_rate_hz=48000)
    assert report.integrated_lufs is None
    assert report.momentary_max_lufs is None
    assert "shorter than one 400 ms gating block" in report.reason
    assert report.sample_peak_dbfs == pytest.approx(-20.0, abs=0.01)
    with pytest.raises(InvalidAudioError, match="400 ms"):
        integrated_loudness(sine(-20, 0.3, 48000), sample_rate_hz=48000)


def test_silence_is_below_the_absolute_gate():
    report = measure_loudness(np.zeros((2, 48000 * 5), dtype=np.float32), sample_rate_hz=48000)
    assert report.integrated_lufs is None
    assert "absolute gate" in report.reason
    assert report.true_peak_dbtp == -math.inf
    assert integrated_loudness(np.zeros((2, 48000), dtype=np.float32), sample_rate_hz=48000) == -math.inf


def test_non_finite_samples_are_rejected_with_the_rule():
    audio = sine(-20, 2, 48000)
    audio[0, 100] = np.nan
    with pytest.raises(InvalidAudioError) as err:
        measure_loudness(audio, sample_rate_hz=48000)
    assert err.value.rule == "finite_samples"


def test_rms_and_sample_peak_of_a_full_scale_sine():
    report = measure_loudness(sine(0, 2, 48000, freq_hz=997), sample_rate_hz=48000)
    assert report.sample_peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert report.rms_dbfs == pytest.approx(-3.01, abs=0.01)
