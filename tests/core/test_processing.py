"""Processing chain: gain, limiter, high-pass, resampling, down-mix and trim."""

from __future__ import annotations

import numpy as np
import pytest

from puresound_core.audio import blocks_of
from puresound_core.loudness import integrated_loudness, measure_loudness
from puresound_core.processing import ProcessingPlan, TruePeakLimiter, process_blocks
from puresound_core.true_peak import true_peak_dbtp
from tests.conftest import pink_noise, sine


def _run(audio, rate, plan):
    stats = []
    out = np.concatenate(list(process_blocks(blocks_of(audio, block_size=7000), sample_rate_hz=rate,
                                             plan=plan, stats_out=stats)), axis=1)
    return out, stats[0]


def test_gain_only_is_exact_and_reports_no_limiting():
    audio = pink_noise(6, 48000, level_dbfs=-30)
    out, stats = _run(audio, 48000, ProcessingPlan(gain_db=6.0, output_sample_rate_hz=48000, output_channels=2))
    np.testing.assert_allclose(out, audio * 10 ** (6 / 20), rtol=1e-6, atol=1e-7)
    assert not stats.limiter_active and stats.max_gain_reduction_db == 0.0


@pytest.mark.parametrize("sample_rate_hz", [44100, 48000])
def test_limiter_holds_true_peak_under_the_ceiling(sample_rate_hz):
    # A programme with sparse transients (drum-hit-like bursts 12 dB over the bed).
    audio = pink_noise(8, sample_rate_hz, level_dbfs=-26)
    burst = int(0.01 * sample_rate_hz)
    for second in range(8):
        start = second * sample_rate_hz + sample_rate_hz // 3
        audio[:, start:start + burst] *= 4.0
    gain_db = -1.0 - true_peak_dbtp(audio) + 3.0            # the gain overshoots the ceiling by 3 dB
    plan = ProcessingPlan(gain_db=gain_db, ceiling_dbtp=-1.0, output_sample_rate_hz=sample_rate_hz,
                          output_channels=2)
    out, stats = _run(audio, sample_rate_hz, plan)
    assert out.shape == audio.shape
    assert true_peak_dbtp(out) <= -1.0
    assert stats.limiter_active and 2.9 < stats.max_gain_reduction_db < 3.5
    # Peak limiting, not compression: loudness within 0.5 LU of plain gain.
    plain = integrated_loudness(audio, sample_rate_hz=sample_rate_hz) + gain_db
    assert integrated_loudness(out, sample_rate_hz=sample_rate_hz) == pytest.approx(plain, abs=0.5)


def test_limiter_catches_a_peak_in_the_first_samples():
    audio = sine(-20, 1, 48000)
    audio[:, 3] = 1.0                                          # transient before the look-ahead fills
    plan = ProcessingPlan(gain_db=0.0, ceiling_dbtp=-1.0, output_sample_rate_hz=48000, output_channels=2)
    out, stats = _run(audio, 48000, plan)
    assert true_peak_dbtp(out) <= -1.0 and stats.limiter_active


def test_limiter_keeps_alignment_and_is_transparent_below_the_ceiling():
    audio = sine(-20, 2, 48000, freq_hz=440)
    limiter = TruePeakLimiter(ceiling_dbtp=-1.0, sample_rate_hz=48000, channels=2)
    out = np.concatenate([limiter.process(b) for b in blocks_of(audio, block_size=1000)] + [limiter.flush()], axis=1)
    np.testing.assert_array_equal(out, audio)
    assert limiter.samples_limited == 0


def test_highpass_removes_rumble_and_keeps_voice_band():
    low = sine(-12, 3, 48000, freq_hz=30, channels=1)
    mid = sine(-12, 3, 48000, freq_hz=1000, channels=1)
    plan = ProcessingPlan(highpass_hz=80, output_sample_rate_hz=48000, output_channels=1)
    low_out, _ = _run(low, 48000, plan)
    mid_out, _ = _run(mid, 48000, plan)
    assert np.abs(low_out[:, 24000:]).max() < 10 ** (-12 / 20) * 10 ** (-15 / 20)   # >= 15 dB down
    assert np.abs(mid_out[:, 24000:]).max() == pytest.approx(10 ** (-12 / 20), rel=0.01)


def test_resample_and_downmix_keep_duration_and_level():
    audio = sine(-10, 5, 44100, freq_hz=1000)
    out, stats = _run(audio, 44100, ProcessingPlan(output_sample_rate_hz=48000, output_channels=1))
    assert out.shape[0] == 1
    assert abs(out.shape[1] - 5 * 48000) <= 1
    assert stats.samples_in == 5 * 44100 and stats.samples_out == out.shape[1]
    assert measure_loudness(out[:, 4800:-4800], sample_rate_hz=48000).sample_peak_dbfs == pytest.approx(-10, abs=0.05)


def test_trim_cuts_exactly_the_asked_samples():
    audio = pink_noise(3, 16000, channels=1)
    out, _ = _run(audio, 16000, ProcessingPlan(output_sample_rate_hz=16000, output_channels=1,
                                               trim_start_samples=1600, trim_end_samples=3200))
    np.testing.assert_array_equal(out, audio[:, 1600:-3200])
