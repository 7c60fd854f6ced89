"""Content analysis: classes on the real corpus, features on synthetic signals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soxr

from puresound_core.analysis import analyze_blocks, analyze_file
from puresound_core.audio import blocks_of
from tests.conftest import pink_noise, sine


def _speech_or_music_files(corpus, folder):
    return sorted(p for p in (corpus / folder).rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "expected"), [("speech", "speech"), ("music", "music")])
def test_corpus_speech_and_music_are_classified(corpus, folder, expected):
    files = _speech_or_music_files(corpus, folder)
    assert len(files) >= 7
    wrong = {}
    for path in files:
        content = analyze_file(path).content
        if content.content_class != expected:
            wrong[path.name] = (content.content_class, content.decided_by)
    assert not wrong


def test_silence_leading_trailing_and_ratio():
    rate = 16000
    audio = np.concatenate([np.zeros((1, rate)), sine(-20, 3, rate, channels=1), np.zeros((1, 2 * rate))],
                           axis=1).astype(np.float32)
    content = analyze_blocks(blocks_of(audio), sample_rate_hz=rate, channels=1).content
    assert content.leading_silence_s == pytest.approx(1.0, abs=0.011)
    assert content.trailing_silence_s == pytest.approx(2.0, abs=0.011)
    assert content.silence_ratio == pytest.approx(0.5, abs=0.01)


def test_digital_silence_is_the_silence_class():
    report = analyze_blocks(blocks_of(np.zeros((2, 48000 * 30), dtype=np.float32)), sample_rate_hz=48000, channels=2)
    assert report.content.content_class == "silence"
    assert report.content.noise_floor_dbfs is None
    assert report.loudness.integrated_lufs is None


def test_dc_offset_and_noise_floor():
    rng = np.random.default_rng(5)
    noise = (10 ** (-70 / 20) * rng.standard_normal((1, 48000 * 10))).astype(np.float32)
    noise[:, 48000 * 4:48000 * 6] += sine(-10, 2, 48000, channels=1)
    audio = noise + 0.01
    content = analyze_blocks(blocks_of(audio), sample_rate_hz=48000, channels=1).content
    assert content.dc_offset[0] == pytest.approx(0.01, abs=1e-4)
    # Noise floor reads the quiet part: RMS of DC 0.01 (-40 dBFS) plus -70 dBFS noise.
    assert content.noise_floor_dbfs == pytest.approx(-40.0, abs=0.5)


def test_bandwidth_spots_an_upsampled_source():
    narrow = pink_noise(10, 8000, level_dbfs=-20)
    upsampled = soxr.resample(narrow.T, 8000, 44100).T.astype(np.float32)
    content = analyze_blocks(blocks_of(upsampled), sample_rate_hz=44100, channels=2).content
    assert content.bandwidth_hz == pytest.approx(4000, rel=0.1)


def test_bandwidth_spots_an_encoder_low_pass():
    rate = 44100
    sos = scipy.signal.ellip(10, 0.1, 100, 16000, fs=rate, output="sos")  # MP3-style 16 kHz low-pass
    audio = scipy.signal.sosfilt(sos, pink_noise(10, rate, level_dbfs=-20)).astype(np.float32)
    content = analyze_blocks(blocks_of(audio), sample_rate_hz=rate, channels=2).content
    assert content.bandwidth_hz == pytest.approx(16000, rel=0.08)


def test_full_band_noise_has_full_bandwidth():
    content = analyze_blocks(blocks_of(pink_noise(10, 44100)), sample_rate_hz=44100, channels=2).content
    assert content.bandwidth_hz > 20000


def test_tempo_of_a_click_track():
    rate = 22050
    bpm = 120
    audio = np.zeros((1, rate * 30), dtype=np.float32)
    period = int(rate * 60 / bpm)
    click = sine(-6, 0.02, rate, freq_hz=1500, channels=1)[0] * np.hanning(int(0.02 * rate))
    for start in range(0, audio.shape[1] - click.size, period):
        audio[0, start:start + click.size] += click
    # Over a sustained pad, as in music: a metronome alone pauses between clicks like speech.
    audio += sine(-24, 30, rate, freq_hz=220, channels=1) + sine(-27, 30, rate, freq_hz=330, channels=1)
    content = analyze_blocks(blocks_of(audio), sample_rate_hz=rate, channels=1).content
    assert content.content_class == "music"
    assert content.tempo_bpm == pytest.approx(bpm, rel=0.04)


def test_report_can_be_asked_twice():
    from puresound_core.analysis import ContentAnalyzer

    analyzer = ContentAnalyzer(sample_rate_hz=16000, channels=2)
    for block in blocks_of(pink_noise(5, 16000, level_dbfs=-20), block_size=4000):
        analyzer.process(block)
    first = analyzer.report()
    assert analyzer.report() == first
