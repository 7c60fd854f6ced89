"""The limiter-loss model against the limiter itself, and one decode per source for planning and rendering."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import puresound_core.render as render_module
from puresound_core.analysis import analyze_file
from puresound_core.audio import Encoder, EncoderSettings, blocks_of, encode_blocks
from puresound_core.limiter_loss import LimiterLossModel
from puresound_core.loudness import LoudnessMeter
from puresound_core.processing import ProcessingChain, ProcessingPlan, process_blocks
from puresound_core.render import LoudnessTarget, plan_renditions, render_renditions
from tests.conftest import pink_noise, write_wav


def _bursty(seconds: float, rate: int, *, channels: int = 2, seed: int = 1) -> np.ndarray:
    """Pink noise with 10 ms bursts 16 dB over the bed every 0.3 s: the limiter works on every burst."""
    audio = pink_noise(seconds, rate, channels=channels, level_dbfs=-30, seed=seed)
    step, length = int(0.3 * rate), int(0.01 * rate)
    for start in range(step // 2, audio.shape[1] - length, step):
        audio[:, start:start + length] *= 6.3
    return audio


def _limited_lufs(audio: np.ndarray, rate: int, plan: ProcessingPlan) -> float:
    meter = LoudnessMeter(sample_rate_hz=rate, channels=plan.output_channels)
    for block in process_blocks(blocks_of(audio, block_size=4096), sample_rate_hz=rate, plan=plan):
        meter.process(block)
    return meter.report().integrated_lufs


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 96000])
@pytest.mark.parametrize("gain_db", [8.0, 14.0])
def test_predicted_loss_matches_the_limiter_within_a_tenth_of_it(rate, gain_db):
    audio = _bursty(6, rate)
    meter = LoudnessMeter(sample_rate_hz=rate, channels=2)
    model = LimiterLossModel(sample_rate_hz=rate, channels=2)
    for block in blocks_of(audio, block_size=3000):
        meter.process(block)
        model.process(block)
    unlimited = meter.report().integrated_lufs + gain_db
    plan = ProcessingPlan(output_sample_rate_hz=rate, output_channels=2, gain_db=gain_db, ceiling_dbtp=-1.0)
    actual = unlimited - _limited_lufs(audio, rate, plan)
    assert actual > 0.2  # the case limits for real
    assert abs(model.loss_lu(gain_db, -1.0) - actual) <= max(0.1 * actual, 0.02)


def test_solved_gain_lands_the_limited_signal_on_the_aim():
    rate = 48000
    audio = _bursty(8, rate, seed=5)
    meter = LoudnessMeter(sample_rate_hz=rate, channels=2)
    model = LimiterLossModel(sample_rate_hz=rate, channels=2)
    for block in blocks_of(audio):
        meter.process(block)
        model.process(block)
    delivered = meter.report().integrated_lufs
    gain, loss = model.solve_gain_db(delivered_lufs=delivered, aim_lufs=-14.0, ceiling_dbtp=-1.0, max_gain_db=40)
    assert loss > 0.5
    plan = ProcessingPlan(output_sample_rate_hz=rate, output_channels=2, gain_db=gain, ceiling_dbtp=-1.0)
    assert abs(_limited_lufs(audio, rate, plan) - -14.0) <= 0.1


def test_the_limiter_feeds_the_model_what_it_sees():
    rate = 44100
    audio = _bursty(4, rate)
    alone = LimiterLossModel(sample_rate_hz=rate, channels=2)
    for block in blocks_of(audio, block_size=1000):
        alone.process(block)
    fed = LimiterLossModel(sample_rate_hz=rate, channels=2)
    chain = ProcessingChain(sample_rate_hz=rate, plan=ProcessingPlan(output_sample_rate_hz=rate, output_channels=2,
                                                                     gain_db=10.0, ceiling_dbtp=-1.0),
                            loss_model=fed)
    for block in blocks_of(audio, block_size=1000):
        chain.process(block)
    chain.flush()  # the flush's zero padding adds nothing that changes the loss
    assert fed.loss_lu(10.0, -1.0) == pytest.approx(alone.loss_lu(10.0, -1.0), abs=0.01)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 5000), block=st.integers(1, 2000), rate=st.sampled_from([8000, 11025, 44100, 192000]))
def test_the_model_takes_any_length_and_block_size(n, block, rate):
    audio = np.random.default_rng(n).standard_normal((1, n)).astype(np.float32) * 0.5
    model = LimiterLossModel(sample_rate_hz=rate, channels=1, dual_mono=True)
    for start in range(0, n, block):
        model.process(audio[:, start:start + block])
    assert model.samples == n
    loss = model.loss_lu(20.0, -1.0)
    assert np.isfinite(loss) and loss >= 0.0


@pytest.mark.parametrize("settings_", [
    EncoderSettings(codec="opus", bitrate_kbps=48, sample_rate_hz=48000, channels=1),
    EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
    EncoderSettings(codec="aac", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
    EncoderSettings(codec="flac", bit_depth=16, sample_rate_hz=44100, channels=2),
])
def test_the_same_samples_encode_to_the_same_bytes(tmp_path, settings_):
    audio = pink_noise(2, settings_.sample_rate_hz, channels=settings_.channels, seed=2)
    digests = set()
    for name in ("a", "b"):
        out = tmp_path / f"{name}.{settings_.extension}"
        encode_blocks(blocks_of(audio), out, settings=settings_, tags={"title": "t"})
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_an_aborted_encoder_leaves_nothing(tmp_path):
    settings_ = EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2)
    with pytest.raises(RuntimeError), Encoder(tmp_path / "x.mp3", settings=settings_) as encoder:
        encoder.write(pink_noise(1, 44100, seed=1))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def count_decodes(monkeypatch):
    """Count full decodes of each file by render.py (planning and rendering; verification decodes outputs)."""
    counts: dict[str, int] = {}
    real = render_module.iter_blocks

    def counting(path, *args, **kwargs):
        counts[str(path)] = counts.get(str(path), 0) + 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(render_module, "iter_blocks", counting)
    return counts


def test_a_podcast_source_is_decoded_once_to_plan_and_once_to_render(tmp_path, count_decodes):
    source = write_wav(tmp_path / "episode.wav", _bursty(6, 44100), 44100)
    settings_ = [EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
                 EncoderSettings(codec="opus", bitrate_kbps=48, sample_rate_hz=48000, channels=1)]
    target = LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)
    analysis = analyze_file(source)
    plans = plan_renditions(source, settings_, target=target, analysis=analysis)
    assert count_decodes[str(source)] == 1  # the mono down-mix and the limited stereo share one pass
    assert all(p.plan.ceiling_dbtp is not None and p.predicted_limiter_loss_lu > 0 for p in plans)
    outs = [tmp_path / "out" / f"r{i}.{s.extension}" for i, s in enumerate(settings_)]
    results = render_renditions(source, outs, settings=settings_, target=target, analysis=analysis, planned=plans)
    assert all(r.verification.passed for r in results), [r.verification.failures for r in results]
    # One pass renders both; a retry (Opus 48 kbps on bursty noise may overshoot) renders only its rendition.
    retries = sum(r.attempts - 1 for r in results)
    assert count_decodes[str(source)] == 2 + retries
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["r0.mp3", "r1.opus"]
    for r in results:
        assert abs(r.verification.loudness.integrated_lufs - -16.0) <= 0.3


@pytest.mark.parametrize("failure", ["encoder", "stop"])
def test_a_rendition_that_fails_mid_pass_stops_every_rendition_and_leaves_no_file(tmp_path, monkeypatch, failure):
    from puresound_core import cancel
    from puresound_core.errors import EncodingError

    source = write_wav(tmp_path / "episode.wav", _bursty(20, 44100), 44100)
    settings_ = [EncoderSettings(codec="mp3", bitrate_kbps=128, sample_rate_hz=44100, channels=2),
                 EncoderSettings(codec="opus", bitrate_kbps=48, sample_rate_hz=48000, channels=1)]
    target = LoudnessTarget(target_lufs=-16.0, tolerance_lu=1.0, ceiling_dbtp=-1.0)
    analysis = analyze_file(source)
    plans = plan_renditions(source, settings_, target=target, analysis=analysis)
    real_write, calls = Encoder.write, []

    def failing_write(self, block):
        calls.append(self.settings.codec)
        if self.settings.codec == "opus" and calls.count("opus") == 3:
            if failure == "encoder":
                raise EncodingError("opus: injected failure")
            cancel.request_stop("test")
        return real_write(self, block)

    monkeypatch.setattr(Encoder, "write", failing_write)
    out = tmp_path / "out"
    expected = EncodingError if failure == "encoder" else cancel.Cancelled
    try:
        with pytest.raises(expected):
            render_renditions(source, [out / "a.mp3", out / "b.opus"], settings=settings_, target=target,
                              analysis=analysis, planned=plans)
        with pytest.raises(expected):  # the pass alone (no caller clean-up): no attempt or .part file either
            calls.clear()
            cancel.clear_stop()
            render_module._render_pass(source, 44100, [(p.plan, s, out / f"pass.{s.extension}", False)
                                                      for p, s in zip(plans, settings_)], {})
    finally:
        cancel.clear_stop()
    assert not [p for p in out.rglob("*") if p.is_file()]
