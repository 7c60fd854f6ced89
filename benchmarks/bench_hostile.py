"""`puresound analyze` over surround files and hundreds of damaged files, in one process.

Run by hand: ``.venv/bin/python benchmarks/bench_hostile.py``. Writes 6-, 8- and
12-channel 48 kHz 24-bit WAVs and the fuzz test's 480 seeded mutants of corpus WAV / FLAC /
MP3 / Ogg files (byte flips, truncations, splices, corrupted header fields) to a temporary
folder, runs ``puresound analyze --json`` once over all of them, and prints: the exit code
(a native crash in the decoder would kill the process: 139), files with a verdict, valid
files, rejections per rule, and the time.

Bar (issue 7): 0 crashes, 0 hangs, every file valid or rejected with a rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from puresound_core.audio import EncoderSettings, encode_blocks, iter_blocks  # noqa: E402
from tests.conftest import CORPUS  # noqa: E402
from tests.core.test_fuzz import _mp3_frames, _mutants  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="puresound-hostile-"))
    inputs = work / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(7)
    for channels in (6, 8, 12):
        t = np.arange(48000 * 5) / 48000
        audio = np.stack([0.1 * np.sin(2 * np.pi * (200 + 110 * c) * t) for c in range(channels)], axis=1)
        audio += rng.standard_normal(audio.shape) * 1e-3
        sf.write(str(inputs / f"surround_{channels}ch.wav"), audio, 48000, subtype="PCM_24")
    parents_dir = work / "parents"
    parents_dir.mkdir()
    wav = parents_dir / "speech.wav"
    wav.write_bytes((CORPUS / "speech" / "en-US_Allison__vm-intro.wav").read_bytes())
    flac = parents_dir / "speech.flac"
    encode_blocks(iter_blocks(wav), flac, settings=EncoderSettings(codec="flac", sample_rate_hz=8000, channels=1))
    mp3_data = (CORPUS / "music" / "asc__machine_wars.mp3").read_bytes()
    mp3 = parents_dir / "music.mp3"
    mp3.write_bytes(mp3_data[:_mp3_frames(mp3_data)[160]])
    ogg = parents_dir / "effect.ogg"
    ogg.write_bytes((CORPUS / "effects" / "oxygen__Oxygen-K3B-Finish-Success.ogg").read_bytes())
    mutants = _mutants({"wav": wav, "flac": flac, "mp3": mp3, "ogg": ogg}, inputs)
    total = len(list(inputs.iterdir()))
    started = time.perf_counter()
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "puresound"), "analyze", "--json", str(inputs)],
                          capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    rows = json.loads(proc.stdout) if proc.returncode == 0 else []
    rules = Counter(rule for row in rows for rule in row["failed_rules"])
    unexplained = [row["path"] for row in rows if not row["valid"] and not row["failed_rules"]]
    surround = {Path(r["path"]).name: (r["valid"], r["integrated_lufs"], r["channels"] if r["valid"] else None)
                for r in rows if "surround" in r["path"]}
    print(f"puresound analyze --json over {total} files ({len(mutants)} mutants + 3 surround): "
          f"exit {proc.returncode}, {seconds:.1f} s")
    print(f"  with a verdict: {len(rows)} of {total}; valid {sum(r['valid'] for r in rows)}; "
          f"rejected without a rule: {len(unexplained)}")
    print(f"  surround: {surround}")
    print("  rejections per rule: " + ", ".join(f"{rule} {n}" for rule, n in rules.most_common()))
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
    sys.exit(0 if proc.returncode == 0 and len(rows) == total and not unexplained else 1)


if __name__ == "__main__":
    main()
