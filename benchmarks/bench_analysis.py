"""Analysis speed: decode + loudness + LRA + true peak + content features, one core.

Bar (issue 2): a 10-minute stereo 44.1 kHz file at >= 150x realtime.
Run: ``python benchmarks/bench_analysis.py``
"""

from __future__ import annotations

import time

from _common import long_programme, pin_one_core

from puresound_core.analysis import analyze_file
from puresound_core.audio import iter_blocks

DURATION_S = 600.0


def main() -> None:
    pin_one_core()
    rows = []
    for codec in ("wav", "flac", "mp3"):
        path = long_programme(DURATION_S, sample_rate_hz=44100, codec=codec, name=f"ten_minutes_44k_{codec}")
        analyze_file(path)  # warm-up: imports, numba, librosa filters
        t0 = time.perf_counter()
        for _ in iter_blocks(path):
            pass
        decode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = analyze_file(path)
        total_s = time.perf_counter() - t0
        rows.append((codec, decode_s, total_s, DURATION_S / total_s, report.loudness.integrated_lufs,
                     report.content.content_class))
    print(f"{'source':8} {'decode s':>9} {'analysis s':>11} {'x realtime':>11} {'LUFS':>7}  class")
    for codec, dec, tot, speed, lufs, cls in rows:
        print(f"{codec:8} {dec:9.2f} {tot:11.2f} {speed:11.0f} {lufs:7.2f}  {cls}")
    print("bar: >= 150x realtime on one core (10-minute stereo 44.1 kHz)")


if __name__ == "__main__":
    main()
