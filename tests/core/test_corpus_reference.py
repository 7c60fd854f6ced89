"""Every corpus file of at least 3 s: our integrated loudness vs pyloudnorm (DeMan), 0.1 LU."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from puresound_core.analysis import analyze_file
from puresound_core.audio import decode
from puresound_core.validation import validate_file


@pytest.mark.slow
def test_integrated_loudness_agrees_with_pyloudnorm_on_the_corpus(corpus):
    checked = {}
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix not in (".tsv", ".md", ".txt")):
        if not validate_file(path).passed:
            continue  # the adversarial files: covered by test_validation
        audio, rate = decode(path)
        if audio.shape[1] < 3 * rate:
            continue
        ours = analyze_file(path).loudness.integrated_lufs
        reference = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(audio.T.astype(np.float64))
        checked[path.name] = (ours, reference)
    assert len(checked) >= 15
    off = {name: v for name, v in checked.items() if abs(v[0] - v[1]) > 0.1}
    assert not off, off
