"""Channel layouts: names from PyAV, BS.1770-4 weights, ITU-R BS.775-3 down-mix matrices."""

from __future__ import annotations

import av
import numpy as np
import pytest

from puresound_core.channels import (
    DEFAULT_LAYOUTS,
    bs1770_weights,
    channel_names,
    downmix_matrix,
)
from puresound_core.errors import InvalidAudioError
from tests.conftest import write_wav

H = 0.7071067811865476  # -3.01 dB


@pytest.mark.parametrize(("layout", "expected"), [
    ("mono", ("FC",)),
    ("stereo", ("FL", "FR")),
    ("5.1", ("FL", "FR", "FC", "LFE", "BL", "BR")),
    ("5.1(side)", ("FL", "FR", "FC", "LFE", "SL", "SR")),
    ("7.1", ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR")),
    ("7.1.4", ("FL", "FR", "FC", "LFE", "BL", "BR", "SL", "SR", "TFL", "TFR", "TBL", "TBR")),
])
def test_channel_names_come_from_pyav(layout, expected):
    assert channel_names(len(expected), layout) == expected


@pytest.mark.parametrize("layout", [None, "", "6 channels", "not-a-layout"])
def test_unspecified_six_channels_default_to_5_1(layout):
    assert channel_names(6, layout) == ("FL", "FR", "FC", "LFE", "BL", "BR")


def test_every_default_layout_has_its_channel_count_and_other_counts_are_all_front():
    for count, name in DEFAULT_LAYOUTS.items():
        assert len(channel_names(count, None)) == count == av.AudioLayout(name).nb_channels
    assert channel_names(11, None) == ("NONE",) * 11
    np.testing.assert_array_equal(bs1770_weights(channel_names(11, None)), np.ones(11))


def test_a_wav_without_channel_mask_is_reported_as_unspecified_and_gets_the_default(tmp_path):
    path = write_wav(tmp_path / "six.wav", np.zeros((6, 480), dtype=np.float32), 48000)  # plain PCM WAV: no mask
    with av.open(str(path)) as container:
        layout = container.streams.audio[0].codec_context.layout.name
    assert layout == "6 channels"
    assert channel_names(6, layout)[3] == "LFE"


def test_layout_with_another_channel_count_is_rejected_with_the_rule():
    with pytest.raises(InvalidAudioError, match="'5.1' has 6 channels, the signal has 2") as err:
        channel_names(2, "5.1")
    assert err.value.rule == "channel_layout"


def test_bs1770_weights_for_7_1_4():
    weights = bs1770_weights(channel_names(12, "7.1.4"))
    np.testing.assert_array_equal(weights, [1, 1, 1, 0, 1.41, 1.41, 1.41, 1.41, 1, 1, 1, 1])
    assert bs1770_weights(["LOW_FREQUENCY", "LFE2", "BC", "side_left"]).tolist() == [0.0, 0.0, 1.41, 1.41]


def test_stereo_downmix_matrix_of_7_1_follows_bs775():
    m = downmix_matrix(channel_names(8, "7.1"), 2)
    #                 FL   FR   FC   LFE  BL   BR   SL   SR
    expected = [[1.0, 0.0, H, 0.0, H, 0.0, H, 0.0],
                [0.0, 1.0, H, 0.0, 0.0, H, 0.0, H]]
    np.testing.assert_allclose(m, expected, atol=1e-7)


def test_mono_downmix_matrix_of_5_1_follows_bs775():
    # BS.775-3 Table 2: M = 0.7071 L + 0.7071 R + C + 0.5 Ls + 0.5 Rs; LFE dropped.
    m = downmix_matrix(channel_names(6, "5.1(side)"), 1)
    np.testing.assert_allclose(m, [[H, H, 1.0, 0.0, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(downmix_matrix(channel_names(2, "stereo"), 1), [[H, H]], atol=1e-7)


def test_top_channels_fold_into_their_side_at_minus_3_db():
    names = channel_names(12, "7.1.4")
    m = downmix_matrix(names, 2)
    for top in ("TFL", "TBL"):
        np.testing.assert_allclose(m[:, names.index(top)], [H, 0.0], atol=1e-7)
    for top in ("TFR", "TBR"):
        np.testing.assert_allclose(m[:, names.index(top)], [0.0, H], atol=1e-7)


def test_trivial_matrices_and_legacy_mode():
    np.testing.assert_array_equal(downmix_matrix(("FC",), 2), [[1.0], [1.0]])
    np.testing.assert_array_equal(downmix_matrix(("FL", "FR"), 2), np.eye(2))
    np.testing.assert_array_equal(downmix_matrix(("FC",), 1), [[1.0]])
    names = channel_names(6, "5.1")
    np.testing.assert_allclose(downmix_matrix(names, 1, mode="legacy"), np.full((1, 6), 1 / 6))
    np.testing.assert_array_equal(downmix_matrix(names, 2, mode="legacy"), [[1, 0, 0, 0, 0, 0]] * 2)
    with pytest.raises(ValueError, match="out_channels"):
        downmix_matrix(names, 6)


def test_ten_and_twelve_channels_without_a_layout_are_immersive_layouts():
    from puresound_core.channels import bs1770_weights, channel_names

    names = channel_names(12, None)
    assert names[3] == "LFE" and names[-4:] == ("TFL", "TFR", "TBL", "TBR")
    assert bs1770_weights(names)[3] == 0.0
    assert channel_names(10, "10 channels")[3] == "LFE"
