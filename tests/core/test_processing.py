"""Processing chain: gain, limiter, high-pass, resampling, down-mix and trim."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from puresound_core.audio import blocks_of
from puresound_core.errors import InvalidAudioError
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


def test_resample_and_downmix_keep_duration_and_loudness():
    # Identical L and R fold to 0.7071 (L + R) = +3.01 dB in mono (ITU-R BS.775-3): the same
    # BS.1770 energy, so the mono rendition is as loud as the stereo source.
    audio = sine(-10, 5, 44100, freq_hz=1000)
    out, stats = _run(audio, 44100, ProcessingPlan(output_sample_rate_hz=48000, output_channels=1))
    assert out.shape[0] == 1
    assert abs(out.shape[1] - 5 * 48000) <= 1
    assert stats.samples_in == 5 * 44100 and stats.samples_out == out.shape[1]
    report = measure_loudness(out[:, 4800:-4800], sample_rate_hz=48000)
    assert report.sample_peak_dbfs == pytest.approx(-10 + 3.01, abs=0.05)
    source = measure_loudness(audio[:, 4410:-4410], sample_rate_hz=44100)
    assert report.integrated_lufs == pytest.approx(source.integrated_lufs, abs=0.05)


def test_legacy_downmix_averages_channels():
    audio = sine(-10, 5, 44100, freq_hz=1000)
    out, _ = _run(audio, 44100, ProcessingPlan(output_sample_rate_hz=48000, output_channels=1, downmix="legacy"))
    assert measure_loudness(out[:, 4800:-4800], sample_rate_hz=48000).sample_peak_dbfs == pytest.approx(-10, abs=0.05)


def test_trim_cuts_exactly_the_asked_samples():
    audio = pink_noise(3, 16000, channels=1)
    out, _ = _run(audio, 16000, ProcessingPlan(output_sample_rate_hz=16000, output_channels=1,
                                               trim_start_samples=1600, trim_end_samples=3200))
    np.testing.assert_array_equal(out, audio[:, 1600:-3200])


# --------------------------------------------------------------------------- down-mix (ITU-R BS.775-3)

H_DB = -3.0103  # 0.7071 in dB

# One tone per channel, on exact FFT bins of a 1 s signal at 48 kHz.
TONES_HZ = {"FL": 300, "FR": 500, "FC": 700, "LFE": 50, "BL": 1100, "BR": 1300, "SL": 1700, "SR": 1900}

# Expected level (dB relative to the source tone) of each channel's tone in L', R' (None: absent).
STEREO_LEVELS_DB = {"FL": (0.0, None), "FR": (None, 0.0), "FC": (H_DB, H_DB), "LFE": (None, None),
                    "BL": (H_DB, None), "BR": (None, H_DB), "SL": (H_DB, None), "SR": (None, H_DB)}
# M = 0.7071 L + 0.7071 R + C + 0.5 Ls + 0.5 Rs (BS.775-3 Table 2).
MONO_LEVELS_DB = {"FL": H_DB, "FR": H_DB, "FC": 0.0, "LFE": None, "BL": 2 * H_DB, "BR": 2 * H_DB,
                  "SL": 2 * H_DB, "SR": 2 * H_DB}


def _tone_per_channel(layout: str) -> tuple[tuple[str, ...], np.ndarray]:
    from puresound_core.channels import channel_names

    channels = {"5.1": 6, "5.1(side)": 6, "7.1": 8}[layout]
    names = channel_names(channels, layout)
    t = np.arange(48000) / 48000
    audio = np.stack([0.1 * np.sin(2 * np.pi * TONES_HZ[n] * t) for n in names]).astype(np.float32)
    return names, audio


def _tone_levels_db(out: np.ndarray) -> dict[int, np.ndarray]:
    """Level of each tone bin in each output channel, dB relative to a 0.1-peak sine."""
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64), axis=1)) * 2 / out.shape[1]
    with np.errstate(divide="ignore"):
        return {f: 20 * np.log10(spectrum[:, f] / 0.1) for f in TONES_HZ.values()}


@pytest.mark.parametrize("layout", ["5.1", "5.1(side)", "7.1"])
def test_stereo_downmix_puts_each_channel_at_its_bs775_level(layout):
    names, audio = _tone_per_channel(layout)
    out, _ = _run(audio, 48000, ProcessingPlan(output_sample_rate_hz=48000, output_channels=2, source_layout=layout))
    levels = _tone_levels_db(out)
    for name in names:
        for side, expected in enumerate(STEREO_LEVELS_DB[name]):
            measured = levels[TONES_HZ[name]][side]
            if expected is None:
                assert measured < -120, (name, side, measured)
            else:
                assert measured == pytest.approx(expected, abs=0.01), (name, side)


@pytest.mark.parametrize("layout", ["5.1", "7.1"])
def test_mono_downmix_puts_each_channel_at_its_bs775_level(layout):
    names, audio = _tone_per_channel(layout)
    out, _ = _run(audio, 48000, ProcessingPlan(output_sample_rate_hz=48000, output_channels=1, source_layout=layout))
    levels = _tone_levels_db(out)
    for name in names:
        expected = MONO_LEVELS_DB[name]
        measured = levels[TONES_HZ[name]][0]
        if expected is None:
            assert measured < -120, (name, measured)
        else:
            assert measured == pytest.approx(expected, abs=0.01), name


def test_six_channels_without_layout_are_down_mixed_as_5_1_and_legacy_keeps_channel_0():
    names, audio = _tone_per_channel("5.1")
    out, _ = _run(audio, 48000, ProcessingPlan(output_sample_rate_hz=48000, output_channels=2,
                                               source_layout="6 channels"))
    assert _tone_levels_db(out)[TONES_HZ["FC"]] == pytest.approx([H_DB, H_DB], abs=0.01)
    legacy, _ = _run(audio, 48000, ProcessingPlan(output_sample_rate_hz=48000, output_channels=2, downmix="legacy"))
    np.testing.assert_array_equal(legacy, np.repeat(audio[:1], 2, axis=0))


def test_mono_source_is_duplicated_into_stereo():
    audio = pink_noise(2, 48000, channels=1, seed=5)
    out, _ = _run(audio, 48000, ProcessingPlan(output_sample_rate_hz=48000, output_channels=2))
    np.testing.assert_array_equal(out, np.repeat(audio, 2, axis=0))


# --------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("extra_gain_db", [0.0, 300.0])
def test_click_in_digital_silence_normalised_to_minus_16_lufs(extra_gain_db):
    # One sample at 0.5 in 10 s of silence: the loudness plan asks for ~+30 dB and the
    # limiter-loss compensation keeps adding gain; 230 dB and more used to fail with
    # "math domain error" (the limiter gain averaged to <= 0), 770 dB gave NaN samples.
    audio = np.zeros((1, 10 * 48000), dtype=np.float32)
    audio[0, 5 * 48000] = 0.5
    gain_db = -16.0 - integrated_loudness(audio, sample_rate_hz=48000) + extra_gain_db
    plan = ProcessingPlan(gain_db=gain_db, ceiling_dbtp=-1.0, output_sample_rate_hz=48000, output_channels=2)
    out, stats = _run(audio, 48000, plan)
    assert out.shape == (2, audio.shape[1]) and np.isfinite(out).all()
    assert true_peak_dbtp(out) <= -1.0
    assert stats.limiter_active and math.isfinite(stats.max_gain_reduction_db)
    # The click (true peak -6.02 dBTP) is brought to the limiter's target, 0.05 dB under -1 dBTP.
    assert stats.max_gain_reduction_db == pytest.approx(gain_db - 6.02 + 1.05, abs=0.1)
    assert np.abs(out).max() == pytest.approx(10 ** (-1.05 / 20), rel=0.01)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(44100, 8000), (48000, 48000), (8000, 192000), (96000, 44100)])
@pytest.mark.parametrize("last", [0, 1])
def test_empty_and_one_sample_final_blocks(in_rate, out_rate, last):
    # A final block of 0 or 1 sample: soxr yields no output for it, and the limiter used to
    # crash on the empty block (sliding_window_view in oversampled_envelope).
    audio = pink_noise(1, in_rate, level_dbfs=-10, seed=2)
    blocks = [audio[:, :4096], audio[:, 4096:4096 * 2], audio[:, :last], np.zeros((2, 0), dtype=np.float32)]
    n = sum(b.shape[1] for b in blocks)
    plan = ProcessingPlan(gain_db=12.0, ceiling_dbtp=-1.0, output_sample_rate_hz=out_rate, output_channels=2)
    stats = []
    out = np.concatenate(list(process_blocks(iter(blocks), sample_rate_hz=in_rate, plan=plan, stats_out=stats)),
                         axis=1)
    assert out.shape[1] == stats[0].samples_out == _expected_length(n, in_rate, out_rate)
    assert true_peak_dbtp(out) <= -1.0


def test_limiter_accepts_empty_and_single_sample_blocks():
    audio = pink_noise(0.2, 48000, level_dbfs=-6, seed=4)
    whole = TruePeakLimiter(ceiling_dbtp=-1.0, sample_rate_hz=48000, channels=2)
    expected = np.concatenate([whole.process(audio), whole.flush()], axis=1)
    limiter = TruePeakLimiter(ceiling_dbtp=-1.0, sample_rate_hz=48000, channels=2)
    assert limiter.process(np.zeros((2, 0), dtype=np.float32)).shape == (2, 0)
    parts = [limiter.process(audio[:, i:i + 1]) for i in range(audio.shape[1])]
    parts.append(limiter.process(np.zeros((2, 0), dtype=np.float32)))
    out = np.concatenate(parts + [limiter.flush()], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert TruePeakLimiter(ceiling_dbtp=-1.0, sample_rate_hz=48000, channels=2).flush().shape == (2, 0)


def test_gain_past_float32_range_without_a_limiter_is_an_error_not_inf():
    audio = pink_noise(0.5, 48000, seed=6)
    with pytest.raises(InvalidAudioError) as err:
        _run(audio, 48000, ProcessingPlan(gain_db=800.0, output_sample_rate_hz=48000, output_channels=2))
    assert err.value.rule == "finite_samples" and "800.0 dB" in str(err.value)


def test_a_block_with_another_channel_count_is_rejected():
    blocks = [np.zeros((2, 100), dtype=np.float32), np.zeros((6, 100), dtype=np.float32)]
    plan = ProcessingPlan(output_sample_rate_hz=48000, output_channels=2)
    with pytest.raises(InvalidAudioError) as err:
        list(process_blocks(iter(blocks), sample_rate_hz=48000, plan=plan))
    assert err.value.rule == "channel_layout"


# --------------------------------------------------------------------------- properties

RATES_HZ = [8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000]


def _expected_length(n: int, in_rate: int, out_rate: int) -> int:
    """soxr's streaming output length: floor(n * out / in + 1/2), i.e. round half up.

    Measured over 1,357 random (rate pair, length, block size) cases with python-soxr 1.1
    (VHQ): always exactly this, whatever the chunking. It is round(n * out / in) except on
    exact halves, where Python's round() goes to even and soxr goes up.
    """
    return n if in_rate == out_rate else (2 * n * out_rate + in_rate) // (2 * in_rate)


def _test_signal(channels: int, n: int, seed: int) -> np.ndarray:
    """Noise at -20 dBFS RMS with a few full-scale clicks: +20 dB of gain drives the limiter."""
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((channels, n))).astype(np.float32)
    if n:
        audio[:, rng.integers(0, n, size=3)] = 0.95
    return audio


def _blocks(audio: np.ndarray, block_size: int):
    for start in range(0, audio.shape[1], block_size):
        yield audio[:, start:start + block_size]


def _render(audio, in_rate, plan, block_size):
    stats = []
    parts = list(process_blocks(_blocks(audio, block_size), sample_rate_hz=in_rate, plan=plan, stats_out=stats))
    assert all(p.shape[0] == plan.output_channels and p.shape[1] > 0 and p.dtype == np.float32 for p in parts)
    out = np.concatenate(parts, axis=1) if parts else np.zeros((plan.output_channels, 0), dtype=np.float32)
    return out, stats[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 200_000), in_rate=st.sampled_from(RATES_HZ), out_rate=st.sampled_from(RATES_HZ),
       in_channels=st.sampled_from([1, 2, 6]), out_channels=st.sampled_from([1, 2]),
       highpass_hz=st.sampled_from([None, 80.0]), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_any_length_block_size_and_rates_keep_length_and_ceiling(n, in_rate, out_rate, in_channels, out_channels,
                                                                 highpass_hz, seed, data):
    # At most ~400 blocks per example keeps each example well under a second.
    block_size = data.draw(st.integers(max(1, n // 400), 70_000), label="block_size")
    plan = ProcessingPlan(gain_db=20.0, ceiling_dbtp=-1.0, highpass_hz=highpass_hz, output_sample_rate_hz=out_rate,
                          output_channels=out_channels)
    out, stats = _render(_test_signal(in_channels, n, seed), in_rate, plan, block_size)
    expected = _expected_length(n, in_rate, out_rate)
    assert out.shape == (out_channels, expected) and stats.samples_out == expected and stats.samples_in == n
    assert np.isfinite(out).all() and math.isfinite(stats.max_gain_reduction_db)
    if expected:
        assert true_peak_dbtp(out) <= -1.0 + 0.1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 60_000), in_rate=st.sampled_from(RATES_HZ), out_rate=st.sampled_from(RATES_HZ),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_output_does_not_depend_on_block_size(n, in_rate, out_rate, seed, data):
    sizes = [data.draw(st.integers(max(1, n // 300), 70_000), label=f"block_size_{i}") for i in range(2)]
    plan = ProcessingPlan(gain_db=20.0, ceiling_dbtp=-1.0, output_sample_rate_hz=out_rate, output_channels=2)
    audio = _test_signal(2, n, seed)
    first, _ = _render(audio, in_rate, plan, sizes[0])
    second, _ = _render(audio, in_rate, plan, sizes[1])
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
