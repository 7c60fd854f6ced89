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


# --------------------------------------------------------------------------- channel weights

SURROUND_GAIN_LU = 10 * math.log10(1.41)   # BS.1770-4 Table 3: G = 1.41 -> +1.49 LU


def _only_in(channel: int, channels: int, signal: np.ndarray) -> np.ndarray:
    audio = np.zeros((channels, signal.shape[1]), dtype=np.float32)
    audio[channel] = signal[0]
    return audio


@pytest.mark.parametrize(("layout", "channels", "surround", "lfe"), [
    ("5.1", 6, "BL", "LFE"),
    ("5.1(side)", 6, "SR", "LFE"),
    ("6 channels", 6, "BR", "LFE"),   # a WAV without a channel mask: default 5.1
    (None, 6, "BL", "LFE"),
    ("7.1", 8, "BL", "LFE"),
    ("7.1", 8, "SR", "LFE"),
    (None, 8, "SL", "LFE"),           # default 7.1
    ("7.1.4", 12, "BR", "LFE"),
])
def test_surround_reads_1_49_lu_above_front_and_lfe_counts_nothing(layout, channels, surround, lfe):
    from puresound_core.channels import channel_names

    names = channel_names(channels, layout)
    noise = pink_noise(5, 48000, channels=1, level_dbfs=-25, seed=7)
    front = measure_loudness(_only_in(0, channels, noise), sample_rate_hz=48000, layout=layout)
    back = measure_loudness(_only_in(names.index(surround), channels, noise), sample_rate_hz=48000, layout=layout)
    assert back.integrated_lufs - front.integrated_lufs == pytest.approx(SURROUND_GAIN_LU, abs=0.01)
    lfe_only = measure_loudness(_only_in(names.index(lfe), channels, noise), sample_rate_hz=48000, layout=layout)
    assert lfe_only.integrated_lufs is None and "absolute gate" in lfe_only.reason
    with_lfe = _only_in(0, channels, noise)
    with_lfe[names.index(lfe)] = pink_noise(5, 48000, channels=1, level_dbfs=-6, seed=8)[0]
    assert measure_loudness(with_lfe, sample_rate_hz=48000, layout=layout).integrated_lufs == pytest.approx(
        front.integrated_lufs, abs=1e-9)


def test_height_channels_weigh_like_front_ones():
    noise = pink_noise(5, 48000, channels=1, level_dbfs=-25, seed=9)
    front = measure_loudness(_only_in(0, 12, noise), sample_rate_hz=48000, layout="7.1.4")
    top = measure_loudness(_only_in(8, 12, noise), sample_rate_hz=48000, layout="7.1.4")   # TFL
    assert top.integrated_lufs == pytest.approx(front.integrated_lufs, abs=1e-9)


def test_six_channel_wav_without_mask_measures_like_pyloudnorm_without_the_lfe(tmp_path):
    import pyloudnorm

    from puresound_core.audio import iter_blocks, probe
    from tests.conftest import write_wav

    rate = 48000
    t = np.arange(10 * rate) / rate
    audio = np.stack([a * np.sin(2 * np.pi * f * t) for a, f in
                      [(0.1, 440), (0.1, 550), (0.2, 1000), (0.5, 60), (0.1, 2000), (0.1, 3000)]]).astype(np.float32)
    path = write_wav(tmp_path / "six.wav", audio, rate, subtype="FLOAT")
    info = probe(path)
    assert info.channel_layout == "6 channels"
    decoded = np.concatenate(list(iter_blocks(path)), axis=1)
    ours = measure_loudness(decoded, sample_rate_hz=rate, layout=info.channel_layout).integrated_lufs
    # pyloudnorm has no LFE: give it L, R, C, Ls, Rs (its 5-channel weights 1, 1, 1, 1.41, 1.41).
    reference = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(
        decoded[[0, 1, 2, 4, 5]].T.astype(np.float64))
    assert ours == pytest.approx(reference, abs=0.01)


def test_layout_with_another_channel_count_is_rejected():
    with pytest.raises(InvalidAudioError) as err:
        LoudnessMeter(sample_rate_hz=48000, channels=2, layout="5.1")
    assert err.value.rule == "channel_layout"


# --------------------------------------------------------------------------- dual mono

def test_dual_mono_equals_the_signal_duplicated_into_stereo():
    mono = pink_noise(8, 48000, channels=1, level_dbfs=-24, seed=11)
    dual = measure_loudness(mono, sample_rate_hz=48000, dual_mono=True).integrated_lufs
    plain = measure_loudness(mono, sample_rate_hz=48000).integrated_lufs
    stereo = measure_loudness(np.repeat(mono, 2, axis=0), sample_rate_hz=48000).integrated_lufs
    assert dual == pytest.approx(stereo, abs=0.01)
    assert dual - plain == pytest.approx(10 * math.log10(2), abs=0.01)
    streamed = LoudnessMeter(sample_rate_hz=48000, channels=1, layout="mono", dual_mono=True)
    for start in range(0, mono.shape[1], 4321):
        streamed.process(mono[:, start:start + 4321])
    assert streamed.report().integrated_lufs == pytest.approx(dual, abs=1e-6)


def test_dual_mono_does_not_change_stereo():
    audio = pink_noise(5, 48000, seed=12)
    assert measure_loudness(audio, sample_rate_hz=48000, dual_mono=True).integrated_lufs == pytest.approx(
        measure_loudness(audio, sample_rate_hz=48000).integrated_lufs, abs=1e-12)
