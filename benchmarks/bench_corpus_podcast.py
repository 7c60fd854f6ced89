"""`puresound run podcast` over the corpus' music and speech, re-measured by FFmpeg's ebur128.

Run by hand: ``.venv/bin/python benchmarks/bench_corpus_podcast.py``. It runs the CLI in a
fresh state folder (cold caches; a temporary Prefect server unless ``PREFECT_API_URL`` is
set), then decodes every published rendition through FFmpeg's own ``ebur128`` filter (PyAV
filter graph; ``dualmono=true`` for mono files: how they sound on two loudspeakers) and
prints one row per rendition, the MP3 / Opus agreement per source, and the retry counts.

Bars (issue 7): every file published; every rendition within -16 +-1 LU as played and
<= -1 dBTP; the MP3 and Opus renditions of each source within 0.5 LU of each other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import av
import av.filter
import av.logging

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
TARGET_LUFS, TOLERANCE_LU, CEILING_DBTP, AGREEMENT_LU = -16.0, 1.0, -1.0, 0.5


def ffmpeg_ebur128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) from FFmpeg's ebur128 filter; mono measured as dual-mono."""
    av.logging.set_level(av.logging.INFO)
    with av.logging.Capture() as logs:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            graph = av.filter.Graph()
            source = graph.add_abuffer(template=stream)
            options = "peak=true" + (":dualmono=true" if stream.codec_context.channels == 1 else "")
            meter = graph.add("ebur128", options)
            sink = graph.add("abuffersink")
            source.link_to(meter)
            meter.link_to(sink)
            graph.configure()

            def drain(out):
                while True:
                    try:
                        out.pull()
                    except (av.error.BlockingIOError, av.error.EOFError):
                        return

            for frame in container.decode(stream):
                source.push(frame)
                drain(sink)
            source.push(None)
            drain(sink)
            del graph, source, meter, sink  # the summary is logged when the filter is freed
    av.logging.set_level(None)
    text = "\n".join(message for _, _, message in logs)
    summary = text[text.rindex("Summary:"):]
    integrated = float(re.search(r"I:\s+(-?[\d.]+|-inf) LUFS", summary).group(1))
    peak = float(re.search(r"Peak:\s+(-?[\d.]+|-inf) dBFS", summary).group(1))
    return integrated, peak


def main() -> None:
    sources = [CORPUS / "music", CORPUS / "speech"]
    work = Path(tempfile.mkdtemp(prefix="puresound-bench-"))
    env = {**os.environ, "PURESOUND_STATE_DIR": str(work / "state")}
    started = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "puresound"), "run", "podcast", *map(str, sources),
                           "--output", str(work / "out")], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    batch = json.loads((work / "out" / "podcast" / "report.json").read_text())
    audio_s = 0.0
    rows, attempts, reasons, agreement = [], Counter(), [], []
    for source in batch["sources"]:
        measured = {}
        for r in source["renditions"]:
            attempts[(r["name"], r["attempts"])] += 1
            if r["retry_reason"]:
                reasons.append(f"{Path(source['path']).name} {r['name']}: {r['retry_reason']}")
            if not r["uri"]:
                continue
            path = Path(r["uri"].removeprefix("file://"))
            lufs, tp = ffmpeg_ebur128(path)
            measured[r["name"]] = lufs
            ok = abs(lufs - TARGET_LUFS) <= TOLERANCE_LU and tp <= CEILING_DBTP
            rows.append((Path(source["path"]).name[:44], r["name"], f"{r['integrated_lufs']:.2f}", f"{lufs:.1f}",
                         f"{tp:.1f}", r["attempts"], "yes" if ok else "NO"))
        if len(measured) == 2:
            agreement.append((Path(source["path"]).name, abs(measured["mp3-128k"] - measured["opus-48k-mono"])))
    for s in batch["sources"]:
        with av.open(s["path"]) as c:
            audio_s += float(c.duration or 0) / av.time_base
    print(f"puresound run podcast {' '.join(map(str, sources))}: exit {proc.returncode}, {seconds:.1f} s, "
          f"{audio_s / 60:.1f} min of audio ({audio_s / seconds:.1f}x realtime), counts {batch['counts']}")
    print(f"\n{'source':44} {'rendition':14} {'ours LUFS':>9} {'ffmpeg I':>8} {'ffmpeg TP':>9} {'tries':>5} ok")
    for row in rows:
        print(f"{row[0]:44} {row[1]:14} {row[2]:>9} {row[3]:>8} {row[4]:>9} {row[5]:>5} {row[6]}")
    compliant = sum(r[6] == "yes" for r in rows)
    print(f"\ncompliant as played (FFmpeg ebur128, dual-mono for mono): {compliant} of {len(rows)}")
    worst = max(agreement, key=lambda a: a[1]) if agreement else ("-", float("nan"))
    print(f"MP3 vs Opus per source: largest difference {worst[1]:.2f} LU ({worst[0]}); "
          f"{sum(a[1] <= AGREEMENT_LU for a in agreement)} of {len(agreement)} within {AGREEMENT_LU} LU")
    print("attempts per rendition:", ", ".join(f"{name} x{n}: {count}" for (name, n), count in sorted(attempts.items())))
    for reason in reasons:
        print("  retry:", reason)
    for s in batch["sources"]:
        if s["verdict"] != "published":
            print(f"  {s['verdict']}: {s['path']}: {s['reason']}")
    sys.exit(0 if proc.returncode == 0 else 1)


if __name__ == "__main__":
    main()
