"""Pure Sound against its peers on the same files, every output re-measured by FFmpeg's ebur128.

Run by hand, on an otherwise idle machine::

    apt-get install ffmpeg                     # ffmpeg-normalize needs the binary (the project does not)
    .venv/bin/pip install ffmpeg-normalize
    .venv/bin/python benchmarks/bench_peers.py [--workers N] [--files N]

On the corpus' music and speech (``../shared/corpus``: MP3, Ogg Vorbis, WAV and GSM, 8 to
48 kHz, mono and stereo) it times, with the same number of parallel workers:

(a) ``bare``: a PyAV transcode into the podcast preset's renditions (MP3 128 kbps stereo
    44.1 kHz + Opus 48 kbps mono), one decode per file, no analysis: the floor;
(b) ``ffmpeg-normalize``: two-pass loudnorm to -16 LUFS / -1 dBTP into MP3 128 kbps stereo
    44.1 kHz (``--dual-mono`` for mono sources);
(c) ``puresound mp3``: ``puresound run`` with a one-rendition preset equal to (b);
(d) ``puresound podcast``: ``puresound run podcast`` (the two renditions of (a));
(e) ``... re-run``: (d) again on the same state (everything cached);
(f) ``puresound mp3, 1 worker`` and ``2 workers`` on a balanced batch (10 three-minute pieces
    of the corpus' longest speech file): throughput scaling.

Each ``puresound run`` uses a fresh state folder and Prefect result storage (cold caches)
against a Prefect server started once before the timings. Every output is decoded through
FFmpeg's own ``ebur128`` filter (PyAV filter graph; ``dualmono`` for mono files) and counted
compliant when within -16 +-1 LU and at or under -1 dBTP.

Bars (issue 8): (d) <= 1.3x (a); (c) >= 3x faster than (b) with 100 % compliant; 2 workers
>= 1.8x the throughput of 1; (e) <= 5 % of (d).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus_podcast import ffmpeg_ebur128  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
TARGET_LUFS, TOLERANCE_LU, CEILING_DBTP = -16.0, 1.0, -1.0
#: The podcast preset's renditions: (codec, extension, bitrate, rate, layout).
PODCAST = [("libmp3lame", "mp3", 128_000, 44100, "stereo"), ("libopus", "opus", 48_000, 48000, "mono")]
MP3_PRESET = """name: mp3only
version: '1'
description: One MP3 rendition, as ffmpeg-normalize makes it in bench_peers.py.
standard: -16 LUFS +-1 LU, true peak <= -1 dBTP
loudness: {target_lufs: -16.0, tolerance_lu: 1.0, ceiling_dbtp: -1.0}
renditions:
  - name: mp3-128k
    encoder: {codec: mp3, bitrate_kbps: 128, sample_rate_hz: 44100, channels: 2}
"""


def corpus_files(limit: int | None) -> list[Path]:
    """Music and speech of the corpus (every format it has), longest first."""
    files = [p for folder in ("music", "speech") for p in sorted((CORPUS / folder).rglob("*")) if p.is_file()]
    files.sort(key=duration_s, reverse=True)
    return files[:limit] if limit else files


def speech_chunks(folder: Path, *, count: int, seconds: float) -> list[Path]:
    """``count`` consecutive ``seconds``-long WAV pieces of the corpus' longest speech file: a balanced batch."""
    from puresound_core.audio import EncoderSettings, decode, encode_blocks

    audio, rate = decode(CORPUS / "speech" / "es-MX_Allison__all-prompts_longform.ogg")
    folder.mkdir(parents=True, exist_ok=True)
    step = int(seconds * rate)
    paths = []
    for i in range(count):
        path = folder / f"es-MX_part{i:02d}.wav"
        encode_blocks([audio[:, i * step:(i + 1) * step]], path,
                      settings=EncoderSettings(codec="wav", bit_depth=16, sample_rate_hz=rate, channels=audio.shape[0]))
        paths.append(path)
    return paths


def duration_s(path: Path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if stream.duration is not None:
            return float(stream.duration * stream.time_base)
        return float(container.duration or 0) / av.time_base


def bare_transcode(job: tuple[str, str]) -> list[str]:
    """Decode once, encode every podcast rendition (PyAV's encoder converts format, layout and rate)."""
    source, out_dir = job
    outs, written = [], []
    with av.open(source) as inp:
        stream = inp.streams.audio[0]
        for codec, ext, bitrate, rate, layout in PODCAST:
            path = Path(out_dir) / f"{Path(source).stem}.{ext}"
            container = av.open(str(path), "w")
            out = container.add_stream(codec, rate=rate, layout=layout)
            out.bit_rate = bitrate
            outs.append((container, out))
            written.append(str(path))
        for frame in inp.decode(stream):
            frame.pts = None
            for container, out in outs:
                for packet in out.encode(frame):
                    container.mux(packet)
        for container, out in outs:
            for packet in out.encode(None):
                container.mux(packet)
            container.close()
    return written


def ffmpeg_normalize(job: tuple[str, str]) -> list[str]:
    source, out_dir = job
    out = Path(out_dir) / f"{Path(source).stem}.mp3"
    with av.open(source) as container:
        mono = container.streams.audio[0].codec_context.channels == 1
    cmd = [shutil.which("ffmpeg-normalize") or str(ROOT / ".venv" / "bin" / "ffmpeg-normalize"), source,
           "-o", str(out), "-f", "-q", "-t", str(TARGET_LUFS), "-tp", str(CEILING_DBTP), "-c:a", "libmp3lame",
           "-b:a", "128k", "-ar", "44100", "-ac", "2"] + (["--dual-mono"] if mono else [])
    subprocess.run(cmd, check=True, capture_output=True)
    return [str(out)]


def pool_run(fn, files: list[Path], out_dir: Path, workers: int) -> tuple[float, list[str]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        outputs = [p for ps in pool.map(fn, [(str(f), str(out_dir)) for f in files]) for p in ps]
    return time.perf_counter() - started, outputs


def puresound_run(preset: str, files: list[Path], state: Path, out: Path, env: dict,
                  workers: int, *, cores: str | None = None) -> tuple[float, list[str], dict]:
    """``puresound run``; ``cores`` (``taskset`` list, e.g. ``"0"``) pins its process tree to those cores."""
    run_env = {**env, "PURESOUND_STATE_DIR": str(state), "PURESOUND_WORKERS": str(workers),
               "PREFECT_LOCAL_STORAGE_PATH": str(state / "prefect-results")}
    started = time.perf_counter()
    pin = ["taskset", "-c", cores] if cores else []
    proc = subprocess.run([*pin, str(ROOT / ".venv" / "bin" / "puresound"), "run", preset, *map(str, files),
                           "--output", str(out)], env=run_env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    batch = json.loads((out / preset / "report.json").read_text())
    outputs = [r["uri"].removeprefix("file://") for s in batch["sources"] for r in s["renditions"] if r["uri"]]
    return seconds, outputs, batch


def compliant(paths: list[str]) -> tuple[int, int]:
    ok = 0
    for path in paths:
        lufs, tp = ffmpeg_ebur128(Path(path))
        ok += abs(lufs - TARGET_LUFS) <= TOLERANCE_LU and tp <= CEILING_DBTP
    return ok, len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--files", type=int, default=None, help="only the N longest files")
    args = parser.parse_args()
    files = corpus_files(args.files)
    audio_s = sum(duration_s(f) for f in files)
    work = Path(tempfile.mkdtemp(prefix="puresound-peers-"))
    (work / "presets").mkdir()
    (work / "presets" / "mp3only.yaml").write_text(MP3_PRESET)
    print(f"{len(files)} files, {audio_s / 60:.1f} min of audio, {args.workers} workers; work in {work}")

    from puresound.embedded import embedded_server

    rows = []
    with embedded_server(startup_timeout_s=180) as api_url:
        env = {**os.environ, "PREFECT_API_URL": api_url, "PURESOUND_PRESETS_DIR": str(work / "presets")}
        seconds, outs = pool_run(bare_transcode, files, work / "bare", args.workers)
        rows.append(("(a) bare transcode (podcast renditions)", seconds, audio_s, compliant(outs)))
        seconds, outs = pool_run(ffmpeg_normalize, files, work / "ffmpeg-normalize", args.workers)
        rows.append(("(b) ffmpeg-normalize (MP3)", seconds, audio_s, compliant(outs)))
        seconds, outs, _ = puresound_run("mp3only", files, work / "state-c", work / "out-c", env, args.workers)
        rows.append(("(c) puresound run, MP3 preset", seconds, audio_s, compliant(outs)))
        seconds, outs, batch = puresound_run("podcast", files, work / "state-d", work / "out-d", env, args.workers)
        rows.append(("(d) puresound run podcast", seconds, audio_s, compliant(outs)))
        retries = sum(r["attempts"] - 1 for s in batch["sources"] for r in s["renditions"])
        seconds, outs, _ = puresound_run("podcast", files, work / "state-d", work / "out-e", env, args.workers)
        rows.append(("(e) podcast re-run (cached)", seconds, audio_s, compliant(outs)))
        ten = speech_chunks(work / "chunks", count=10, seconds=180)
        ten_s = sum(duration_s(f) for f in ten)
        for workers in (1, 2):
            seconds, outs, _ = puresound_run("mp3only", ten, work / f"state-f{workers}", work / f"out-f{workers}",
                                             env, workers)
            rows.append((f"(f) puresound MP3, 10 x 3 min, {workers} worker{'s' if workers > 1 else ''}", seconds,
                         ten_s, compliant(outs)))

    floor, peer = rows[0][1], rows[1][1]
    print(f"\n{'run':44} {'seconds':>8} {'x realtime':>10} {'/ (a)':>6} {'/ (b)':>6} {'compliant':>10}")
    for name, seconds, audio, (ok, n) in rows:
        print(f"{name:44} {seconds:8.1f} {audio / seconds:10.1f} {seconds / floor:6.2f} {seconds / peer:6.2f} "
              f"{ok:>4} of {n:<3}")
    print(f"\n(d) / (a) = {rows[3][1] / floor:.2f} (bar <= 1.3); (b) / (c) = {peer / rows[2][1]:.2f} (bar >= 3); "
          f"(e) / (d) = {100 * rows[4][1] / rows[3][1]:.1f} % (bar <= 5 %); "
          f"2 vs 1 worker throughput = {rows[5][1] / rows[6][1]:.2f}x (bar >= 1.8); podcast retries: {retries}")
    print("(a) counts files whose renditions are within -16 +-1 LU by chance: it does not normalise.")


if __name__ == "__main__":
    main()
