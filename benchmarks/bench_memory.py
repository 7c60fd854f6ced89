"""Peak memory of one worker taking a 2-hour stereo 48 kHz file through the podcast preset.

Bar (issues 2 and 8): peak RSS <= 1 GB per worker (inspect, plan, render both renditions,
verify). The file is made once (FLAC, looped real music) in
``benchmarks/_work``; the measurement runs in a fresh process so the making does not count.
Run: ``python benchmarks/bench_memory.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DURATION_S = 2 * 3600.0


def measure(path: str) -> dict:
    from puresound_core.analysis import inspect_file
    from puresound_core.policy import render_preset, rendition_plans
    from puresound_core.presets import BUILTIN_PRESETS

    preset = BUILTIN_PRESETS["podcast"]
    out = {}
    t0 = time.perf_counter()
    analysis = inspect_file(path, preset.validation).analysis
    out["analysis_s"] = time.perf_counter() - t0
    out["rss_after_analysis_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    plans = rendition_plans(preset, path, analysis)
    out["plan_s"] = time.perf_counter() - t0
    out["rss_after_plan_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    outs = [Path(path).with_suffix(f".{r.name}.{r.encoder.extension}") for r in preset.renditions]
    results = render_preset(preset, path, analysis, plans, outs)
    out["render_encode_verify_s"] = time.perf_counter() - t0
    out["verified"] = all(r.verification.passed for r in results)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(measure(sys.argv[2])))
        return
    from _common import long_programme

    t0 = time.perf_counter()
    path = long_programme(DURATION_S, sample_rate_hz=48000, codec="flac", name="two_hours_48k")
    made_s = time.perf_counter() - t0
    child = subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True,
                           capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"input: {path.name}, {DURATION_S / 3600:.0f} h stereo 48 kHz FLAC "
          f"({path.stat().st_size / 1e6:.0f} MB; made in {made_s:.0f} s)")
    print(f"{'step':34} {'seconds':>8} {'peak RSS MB':>12}")
    print(f"{'inspect (validate+analyse)':34} {result['analysis_s']:8.1f} {result['rss_after_analysis_mb']:12.0f}")
    print(f"{'plan (mono down-mix, limiter)':34} {result['plan_s']:8.1f} {result['rss_after_plan_mb']:12.0f}")
    print(f"{'render MP3+Opus, verify both':34} {result['render_encode_verify_s']:8.1f} {result['peak_rss_mb']:12.0f}")
    print(f"verified: {result['verified']}; bar: peak RSS <= 1024 MB")


if __name__ == "__main__":
    main()
