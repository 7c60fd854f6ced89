"""Pure Sound's domain engine: decode, validate, measure, analyse, render, encode, verify.

Pure functions and typed results; no Prefect, no settings, no environment reads.
Data flows one way: ``flows -> tasks -> puresound_core``.

Audio layout
------------
Everywhere in this package a signal is ``np.ndarray [shape=(channels, samples)]``,
dtype float32, nominally in [-1, 1] (full scale = 1.0 = 0 dBFS). Long signals travel as
iterators of such blocks so memory does not grow with duration;
:func:`puresound_core.audio.check_audio` is the one place that checks the layout.

Modules
-------
audio       probe, block decode, streaming encode (the only module that opens media files)
validation  named rules with preset-set limits -> ValidationReport
loudness    ITU-R BS.1770-4 loudness, EBU Tech 3341 momentary/short-term, EBU Tech 3342 LRA
true_peak   ITU-R BS.1770-4 Annex 2 true peak (4x oversampling)
analysis    content class, silence, noise floor, DC offset, bandwidth, tempo
processing  gain, true-peak limiter, high-pass, resampling, down-mix, trim
render      render + encode one rendition, verify it, retry on lossy misses
presets     Preset / Rendition models, built-ins, YAML loading
storage     Storage protocol; local folder and S3 backends
lineage     SQLModel tables and queries: where every output came from
"""

__version__ = "0.1.0"
