"""Seeded mutants of small real files through validate_isolated: no crash, no hang, no silent wrong duration.

Parents: a corpus WAV (8 kHz speech), a FLAC made from it with PyAV, the first ~4 s
(whole frames) of the corpus MP3 (CBR, no Xing header) and a corpus Ogg Vorbis effect.
Mutants: byte flips, random truncation, splices of two parents, corrupted header fields
(RIFF / data sizes, fmt rate / channels / block align, FLAC STREAMINFO, MPEG frame headers,
Ogg page headers). Every mutant goes through :func:`validate_isolated` in a child process.

What "silently accepted with a wrong duration" means here: a mutant that passes every rule
while its decoded duration differs from its parent's by more than
``declared_duration_tolerance_s``. That is allowed only where the mutated file itself
legitimately describes the shorter stream:

* a WAV whose ``data`` size field (read here, independently of the code under test) now
  declares the decoded duration: a valid shorter WAV followed by junk;
* an MP3 prefix ending exactly on a frame boundary: without a Xing/VBRI header a CBR MP3
  declares no length, so that prefix *is* a complete, shorter MP3.

Every other truncated mutant (a strict prefix of its parent) must be rejected.
"""

from __future__ import annotations

import random
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from puresound_core.audio import EncoderSettings, _mpeg_frame_length, encode_blocks, iter_blocks
from puresound_core.isolation import validate_isolated
from puresound_core.validation import ValidationLimits, validate_file

pytestmark = pytest.mark.slow

SEED = 20240611
PER_PARENT = {"flip": 40, "truncate": 30, "header": 30, "splice": 20}
LIMITS = ValidationLimits(decode_timeout_s=5.0)
TIMEOUT_S = 8.0
TOLERANCE_S = LIMITS.declared_duration_tolerance_s


@dataclass(frozen=True)
class Mutant:
    path: Path
    parent: str
    kind: str
    detail: str
    prefix_of_parent: bool = False


def _mp3_frames(data: bytes) -> list[int]:
    """Offsets of the MPEG frames of a headerless CBR MP3, walking from offset 0."""
    offsets, pos = [], 0
    while pos + 4 <= len(data):
        length = _mpeg_frame_length(data[pos:pos + 4])
        if not length:
            break
        offsets.append(pos)
        pos += length
    return offsets + [pos]


def _wav_data(data: bytes) -> tuple[int, int, int, int] | None:
    """(data offset, data size field, block_align, rate) of a RIFF/WAVE byte string."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, block_align, rate = 12, 0, 0
    while pos + 8 <= len(data):
        cid, size = struct.unpack("<4sI", data[pos:pos + 8])
        if cid == b"fmt " and pos + 24 <= len(data):
            rate = struct.unpack("<I", data[pos + 12:pos + 16])[0]
            block_align = struct.unpack("<H", data[pos + 20:pos + 22])[0]
        if cid == b"data":
            return pos + 8, size, block_align, rate
        pos += 8 + size + (size & 1)
    return None


def _corrupt_header(name: str, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    d = bytearray(data)
    if name == "wav":
        offset, _, _, _ = _wav_data(data)
        field = rng.choice(["riff_size", "data_size", "rate", "channels", "block_align", "bits"])
        where = {"riff_size": (4, "<I"), "data_size": (offset - 4, "<I"), "rate": (24, "<I"),
                 "channels": (22, "<H"), "block_align": (32, "<H"), "bits": (34, "<H")}[field]
        pos, fmt = where
        value = rng.choice([0, 1, 3, 0xFFFF, rng.randrange(0, 1 << (8 * struct.calcsize(fmt)))])
        if fmt == "<I" and rng.random() < 0.3:
            value = 0xFFFFFFFF
        d[pos:pos + struct.calcsize(fmt)] = struct.pack(fmt, value)
        return bytes(d), f"{field}={value}"
    if name == "flac":
        # STREAMINFO body starts at 8: min/max block (0-3), min/max frame (4-9), rate/ch/bps/total (10-17).
        pos = 8 + rng.choice([0, 2, 10, 11, 12, 13, 14, 15, 16, 17])
        d[pos] = rng.randrange(256)
        return bytes(d), f"streaminfo byte {pos - 8}={d[pos]}"
    if name == "mp3":
        frames = _mp3_frames(data)[:-1]
        start = rng.choice(frames[:3] + rng.sample(frames, 3))
        pos = start + rng.choice([1, 2, 3])
        d[pos] = rng.randrange(256)
        return bytes(d), f"frame header at {start} byte {pos - start}={d[pos]}"
    # ogg: a page header field of a random page
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)]
    start = rng.choice(pages[:3] + rng.sample(pages, min(3, len(pages))))
    field, span = rng.choice([("header_type", (5, 6)), ("granule", (6, 14)), ("serial", (14, 18)),
                              ("sequence", (18, 22)), ("crc", (22, 26)), ("segments", (26, 27))])
    for i in range(*span):
        d[start + i] = rng.randrange(256)
    return bytes(d), f"page at {start} {field}"


def _mutants(parents: dict[str, Path], out: Path) -> list[Mutant]:
    rng = random.Random(SEED)
    blobs = {name: path.read_bytes() for name, path in parents.items()}
    mutants: list[Mutant] = []
    for name, data in blobs.items():
        for kind, count in PER_PARENT.items():
            for i in range(count):
                prefix = False
                if kind == "flip":
                    d = bytearray(data)
                    n = rng.choice([1, 1, 2, 4, 16])
                    for _ in range(n):
                        d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
                    mutated, detail = bytes(d), f"{n} bit flips"
                elif kind == "truncate":
                    cut = rng.randrange(1, len(data))
                    mutated, detail, prefix = data[:cut], f"cut at {cut}/{len(data)}", True
                elif kind == "header":
                    mutated, detail = _corrupt_header(name, data, rng)
                else:
                    other = rng.choice(sorted(blobs))
                    head, tail = rng.randrange(1, len(data)), rng.randrange(0, len(blobs[other]) - 1)
                    mutated, detail = data[:head] + blobs[other][tail:], f"{name}[:{head}]+{other}[{tail}:]"
                path = out / f"{name}_{kind}_{i:02d}.{parents[name].suffix.lstrip('.')}"
                path.write_bytes(mutated)
                mutants.append(Mutant(path, name, kind, detail, prefix))
    return mutants


@pytest.fixture(scope="module")
def parents(tmp_path_factory) -> dict[str, Path]:
    from tests.conftest import CORPUS

    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    work = tmp_path_factory.mktemp("fuzz-parents")
    wav = work / "speech.wav"
    wav.write_bytes((CORPUS / "speech" / "en-US_Allison__vm-intro.wav").read_bytes())
    flac = work / "speech.flac"
    encode_blocks(iter_blocks(wav), flac, settings=EncoderSettings(codec="flac", sample_rate_hz=8000,
                                                                   channels=1, bit_depth=16))
    mp3_data = (CORPUS / "music" / "asc__machine_wars.mp3").read_bytes()
    frames = _mp3_frames(mp3_data)
    mp3 = work / "music.mp3"
    mp3.write_bytes(mp3_data[:frames[160]])  # 160 frames of 576 samples at 22.05 kHz: 4.2 s
    ogg = work / "effect.ogg"
    ogg.write_bytes((CORPUS / "effects" / "oxygen__Oxygen-K3B-Finish-Success.ogg").read_bytes())
    return {"wav": wav, "flac": flac, "mp3": mp3, "ogg": ogg}


def _legitimately_shorter(m: Mutant, data: bytes, decoded_s: float, parent_data: bytes) -> bool:
    if m.parent == "wav":
        wav = _wav_data(data)
        if wav is None or not wav[2] or not wav[3]:
            return False
        _, size, block_align, rate = wav
        return abs(size / block_align / rate - decoded_s) <= TOLERANCE_S
    if m.parent == "mp3" and m.prefix_of_parent:
        return len(data) in _mp3_frames(parent_data)
    return False


def test_mutants_are_rejected_or_keep_their_duration(parents, tmp_path):
    parent_reports = {name: validate_file(path, LIMITS) for name, path in parents.items()}
    for name, report in parent_reports.items():
        assert report.passed, (name, [r.message for r in report.failures])
    mutants = _mutants(parents, tmp_path)
    assert len(mutants) >= 400

    def run(m: Mutant):
        start = time.monotonic()
        report = validate_isolated(m.path, LIMITS, timeout_s=TIMEOUT_S)
        return m, report, time.monotonic() - start

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, mutants))
    wall_s = time.monotonic() - started

    outcome: Counter[str] = Counter()
    accepted_by_kind: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    problems: list[str] = []
    for m, report, elapsed in results:
        if elapsed > TIMEOUT_S + 2.0:
            problems.append(f"{m.path.name}: took {elapsed:.1f} s > {TIMEOUT_S} + 2 s")
        crashed = any("decoder process killed by" in r.message for r in report.failures)
        timed_out = "decode_timeout" in report.failed_rules
        outcome["crashed (child)" if crashed else "timed out" if timed_out else
                "accepted" if report.passed else "rejected"] += 1
        by_rule.update(set(report.failed_rules))
        if not report.passed:
            assert report.failures and all(r.rule and r.message for r in report.failures)
            continue
        accepted_by_kind[f"{m.parent}/{m.kind}"] += 1
        parent_s = parent_reports[m.parent].stats.decoded_duration_s
        decoded_s = report.stats.decoded_duration_s
        data = m.path.read_bytes()
        parent_data = parents[m.parent].read_bytes()
        if m.prefix_of_parent and not _legitimately_shorter(m, data, decoded_s, parent_data):
            problems.append(f"{m.path.name} ({m.detail}): truncated mutant accepted, decoded {decoded_s:.3f} s")
        elif abs(decoded_s - parent_s) > TOLERANCE_S and not _legitimately_shorter(m, data, decoded_s, parent_data):
            problems.append(f"{m.path.name} ({m.detail}): accepted with {decoded_s:.3f} s, parent {parent_s:.3f} s")

    print(f"\nfuzz: {len(results)} mutants in {wall_s:.1f} s; {dict(outcome)}; failed rules: {dict(by_rule)}; "
          f"accepted by parent/kind: {dict(accepted_by_kind)}")
    assert not problems, "\n".join(problems)
    assert outcome["timed out"] == 0
