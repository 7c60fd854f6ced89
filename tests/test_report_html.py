"""report.html: a self-contained page of the batch report, checked as text and in a real browser.

Reports are built with the real models (``BatchReport(...).model_dump(mode="json")``, what
the flow writes to report.json); one of them from real measurements: seeded signals through
:class:`puresound_core.loudness.LoudnessMeter`. The browser test opens the written file in
headless Chromium (Debian's ``chromium``) and looks at its DOM and a screenshot.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.models import BatchReport, RenditionSummary, SourceOutcome
from puresound.report_html import render_report_html, write_report_html
from puresound_core.loudness import LoudnessMeter, LoudnessSeries

from .conftest import pink_noise, sine

CHROMIUM = Path("/usr/bin/chromium")
TARGET = {"target_lufs": -16.0, "tolerance_lu": 1.0, "ceiling_dbtp": -1.0, "target_rms_dbfs": None,
          "dual_mono": True, "max_gain_db": 30.0, "max_gain_reduction_db": None}
HOSTILE = "/in/<script>alert(1)</script>&.wav"
LONG_REASON = ("rule 'max_duration' failed: 7412.3 s > 7200 s; " * 20).strip()  # > 600 characters


# --------------------------------------------------------------------------- report builders


def synthetic_series(*, seconds: float, level_lufs: float, hop_s: float = 0.1, seed: int = 0) -> LoudnessSeries:
    """A plausible series: None before the first full window, a silent gap, a slow wobble."""
    rng = np.random.default_rng(seed)
    n = round(seconds / hop_s)
    t = (np.arange(n) + 1) * hop_s
    momentary = level_lufs + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 1.5, n)
    short_term = level_lufs + 1.5 * np.sin(2 * np.pi * t / 7)
    gap = (t > seconds * 0.4) & (t < seconds * 0.45)

    def values(v: np.ndarray, window_s: float) -> list[float | None]:
        return [None if (ti < window_s - 1e-9 or g) else round(float(x), 2) for ti, g, x in zip(t, gap, v)]

    return LoudnessSeries(hop_s=hop_s, momentary_lufs=values(momentary, 0.4), short_term_lufs=values(short_term, 3.0))


def rendition(name: str, *, lufs: float = -16.0, dbtp: float = -1.3, series: LoudnessSeries | None = None,
              attempts: int = 1, retry_reason: str | None = None) -> RenditionSummary:
    return RenditionSummary(name=name, uri=f"file:///out/podcast/{name}.mp3", sha256="ab" * 32, size_bytes=123_456,
                            codec={"codec": "mp3", "bitrate_kbps": 128}, integrated_lufs=lufs,
                            single_channel_lufs=lufs - 3.01, true_peak_dbtp=dbtp, verified=True, attempts=attempts,
                            retry_reason=retry_reason, limiter_active=attempts > 1, max_gain_reduction_db=0.4,
                            failed_checks=[], series=series)


def batch_report(sources: list[SourceOutcome], *, target: dict | None = None, stopped: str | None = None) -> dict:
    counts = {v: sum(s.verdict == v for s in sources) for v in ("published", "rejected", "failed")}
    counts |= {"skipped": 1, "new": len(sources)}
    return BatchReport(preset="podcast", preset_version="3", flow_run_id="0b5e-run",
                       started_at="2025-05-01T10:00:00+00:00", finished_at="2025-05-01T10:01:30+00:00",
                       counts=counts, sources=sources,
                       skipped=["file:///in/already.wav"], stopped=stopped,
                       loudness_target=TARGET if target is None else target).model_dump(mode="json")


def mixed_sources() -> list[SourceOutcome]:
    """Published with renditions, rejected with the source series only, failed with no series."""
    return [
        SourceOutcome(path="/in/episode-01.wav", sha256="cd" * 32, verdict="published", reason="",
                      integrated_lufs_in=-21.4, true_peak_dbtp_in=-4.2, content_class="speech",
                      warnings=["noise floor -52.0 dBFS is above -60 dBFS"], seconds=3.2,
                      series_in=synthetic_series(seconds=40, level_lufs=-21.4),
                      renditions=[rendition("mp3-128k", series=synthetic_series(seconds=40, level_lufs=-16, seed=1)),
                                  rendition("aac-96k", attempts=2, retry_reason="true peak -0.6 dBTP > -1.0 dBTP",
                                            series=synthetic_series(seconds=40, level_lufs=-16.2, seed=2))]),
        SourceOutcome(path=HOSTILE, verdict="rejected", reason=LONG_REASON, failed_rules=["max_duration"],
                      integrated_lufs_in=-30.0, true_peak_dbtp_in=-9.0,
                      series_in=synthetic_series(seconds=20, level_lufs=-30)),
        SourceOutcome(path="/in/caf\\xe9 & co.wav", verdict="failed", reason="DecodeError: invalid data found"),
    ]


def real_sources(sample_rate_hz: int = 48000) -> list[SourceOutcome]:
    """One source measured for real: 4 s pink noise at -30 dBFS RMS, 1 s silence, 5 s of a -12 dBFS sine.

    Its rendition is the same signal with the gain that puts it at -16 LUFS, measured again.
    """
    audio = np.concatenate([pink_noise(4.0, sample_rate_hz, level_dbfs=-30.0, seed=3),
                            np.zeros((2, sample_rate_hz), dtype=np.float32),
                            sine(-12.0, 5.0, sample_rate_hz, freq_hz=500.0)], axis=1)

    def measure(signal: np.ndarray):
        meter = LoudnessMeter(sample_rate_hz=sample_rate_hz, channels=2)
        for start in range(0, signal.shape[1], 4800):  # fed in 100 ms blocks, as the pipeline streams
            meter.process(signal[:, start:start + 4800])
        return meter.report(), meter.series()

    loudness_in, series_in = measure(audio)
    gain_db = -16.0 - loudness_in.integrated_lufs
    loudness_out, series_out = measure((audio * 10 ** (gain_db / 20)).astype(np.float32))
    summary = rendition("mp3-128k", lufs=loudness_out.integrated_lufs, dbtp=loudness_out.true_peak_dbtp,
                        series=LoudnessSeries(**series_out.model_dump()))
    return [SourceOutcome(path="/in/measured.wav", verdict="published", integrated_lufs_in=loudness_in.integrated_lufs,
                          true_peak_dbtp_in=loudness_in.true_peak_dbtp, content_class="music",
                          series_in=LoudnessSeries(**series_in.model_dump()), renditions=[summary])]


def with_series(report: dict) -> int:
    return sum(1 for s in report["sources"]
               if s["series_in"] or any(r["series"] for r in s["renditions"]))


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


# --------------------------------------------------------------------------- the page as text


def test_page_is_self_contained():
    report = batch_report(mixed_sources())
    page = render_report_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    assert "http://" not in page and "https://" not in page and "//" not in re.sub(r"file:///\S+", "", page)
    for fetching in ("<script", "<link", "<img", "<iframe", "src=", "@import", "@font-face"):
        assert fetching not in page.lower(), fetching
    assert re.findall(r"url\((.)", page) == ["#"] * len(re.findall(r"url\(", page))  # only in-page references
    assert len(svgs(page)) == with_series(report) == 2
    page.encode("utf-8")


def test_every_report_string_is_escaped():
    sources = mixed_sources()
    sources[0].renditions[0].name = "<b>mp3</b>"
    page = render_report_html(batch_report(sources, stopped="SIGTERM: <i>files</i> not finished were abandoned"))
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;.wav" in page  # full path, in its section
    assert "&lt;b&gt;mp3&lt;/b&gt; short-term" in page  # legend label in the SVG
    assert "caf\\xe9 &amp; co.wav" in page  # display_name's \xNN text, as written


def test_full_reason_text_and_measurements_are_shown():
    report = batch_report(mixed_sources())
    page = render_report_html(report)
    assert len(LONG_REASON) > 600
    assert page.count(html.escape(LONG_REASON)) == 2  # table row and file section, not truncated
    assert "DecodeError: invalid data found" in page
    table = page[page.index('<table class="summary">'):page.index("</table>")]
    for name in ("mp3-128k", "aac-96k"):
        assert f'<th colspan="3">{name}</th>' in table
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.DOTALL)
    assert len(rows) == 3
    cells = re.findall(r'<td class="num">([^<]*)</td>', rows[0])
    assert cells == ["-21.4", "-4.2", "-16.0", "-1.3", "1", "-16.0", "-1.3", "2"]
    assert re.findall(r'<td class="num">([^<]*)</td>', rows[2]) == [""] * 8
    assert 'href="#source-2"' in rows[1] and 'id="source-2"' in page
    assert "true peak -0.6 dBTP &gt; -1.0 dBTP" in page and "noise floor -52.0 dBFS" in page
    assert "podcast v3" in page and "0b5e-run" in page and "took 90.0 s" in page
    for key, value in report["counts"].items():
        assert f"<span>{key}: {value}</span>" in page


def test_stopped_is_shown_only_when_set():
    assert 'class="stopped"' not in render_report_html(batch_report(mixed_sources()))
    page = render_report_html(batch_report(mixed_sources(), stopped="SIGTERM: files not finished were abandoned"))
    banner = re.search(r'<div class="stopped"[^>]*>(.*?)</div>', page).group(1)
    assert "SIGTERM: files not finished were abandoned" in banner
    assert page.index(banner) < page.index('<table class="summary">')  # above the table


def test_plot_draws_band_ceiling_and_legend():
    page = render_report_html(batch_report(mixed_sources()))
    first = svgs(page)[0]
    for label in ("source momentary", "source short-term", "mp3-128k short-term", "aac-96k short-term",
                  "true-peak ceiling (dBTP)", "target -16.0 \u00b1 1.0 LUFS", "time (s)", "loudness (LUFS)"):
        assert f">{label}<" in first, label
    second = svgs(page)[1]  # rejected: the source's series only
    assert ">source short-term<" in second and "short-term<" not in second.replace(">source short-term<", "")
    ids = re.findall(r'\sid="([^"]+)"', "".join(svgs(page)))
    assert len(ids) == len(set(ids))  # unique in the document
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', "".join(svgs(page))))
    assert refs and refs <= set(ids)


def test_no_band_or_ceiling_without_target():
    target = {**TARGET, "target_lufs": None, "ceiling_dbtp": None, "target_rms_dbfs": -20.0}
    page = render_report_html(batch_report(mixed_sources(), target=target))
    assert len(svgs(page)) == 2
    assert "true-peak ceiling (dBTP)" not in page and ">target " not in page
    assert "Loudness target: none." in page


def test_plots_follow_the_series_present():
    sources = mixed_sources()
    sources[0].series_in = None  # rendition series only: still a plot
    sources.append(SourceOutcome(path="/in/silent.wav", verdict="rejected", reason="rule 'silence' failed",
                                 series_in=LoudnessSeries(hop_s=0.1, momentary_lufs=[None] * 50,
                                                          short_term_lufs=[None] * 50)))
    report = batch_report(sources)
    page = render_report_html(report)
    assert len(svgs(page)) == with_series(report) == 3
    assert page.count('<p class="noplot">') == 1  # the failed file: table row and section, no plot
    assert ">source momentary<" not in svgs(page)[0]


def test_real_measurements_render():
    report = batch_report(real_sources())
    series_in = report["sources"][0]["series_in"]
    assert series_in["hop_s"] == pytest.approx(0.1) and len(series_in["momentary_lufs"]) == 100
    assert series_in["short_term_lufs"][28] is None and series_in["short_term_lufs"][29] is not None
    assert abs(report["sources"][0]["renditions"][0]["integrated_lufs"] + 16.0) < 0.01
    page = render_report_html(report)
    (plot,) = svgs(page)
    # x axis: 10 s of programme; y axis clipped to LUFS in [-60, 0] (tick labels use U+2212 minus).
    ticks = [t.replace("\u2212", "-") for t in re.findall(r">([\u2212\-]?\d+)</text>", plot)]
    assert "10" in ticks and "-60" in ticks and "0" in ticks
    assert min(map(int, ticks)) >= -60
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_same_report_same_page_and_no_pyplot():
    code = ("import sys, json; from puresound.report_html import render_report_html\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
            "report = json.load(sys.stdin)\n"
            "first, second = render_report_html(report), render_report_html(report)\n"
            "assert first == second, 'rendering is not deterministic'\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(batch_report(mixed_sources())), text=True,
                          capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_plots_are_drawn_once_and_read_back_for_the_same_series(tmp_path, monkeypatch):
    from puresound import report_html

    drawn = []
    draw = report_html._loudness_plot_svg
    monkeypatch.setattr(report_html, "_loudness_plot_svg", lambda *a, **k: drawn.append(1) or draw(*a, **k))
    report = batch_report(mixed_sources())
    plain = render_report_html(report)
    assert len(drawn) == 2  # the two sources with series
    first = render_report_html(report, plot_cache_dir=tmp_path / "plots")
    second = render_report_html(report, plot_cache_dir=tmp_path / "plots")
    assert first == second == plain and len(drawn) == 4  # the second page drew nothing
    kept = sorted((tmp_path / "plots").rglob("*.svg"))
    assert len(kept) == 2
    kept[0].write_text("")  # a drawing cut short (say, by a full disk) is drawn again, never shown
    assert render_report_html(report, plot_cache_dir=tmp_path / "plots") == plain and len(drawn) == 5
    drawn.pop()
    # Other series, another target: drawn again.
    report["sources"][0]["renditions"][0]["series"]["short_term_lufs"][-1] = -40.0
    changed = render_report_html(report, plot_cache_dir=tmp_path / "plots")
    assert len(drawn) == 5 and changed != plain
    render_report_html(batch_report(mixed_sources(), target={**TARGET, "target_lufs": -23.0}),
                       plot_cache_dir=tmp_path / "plots")
    assert len(drawn) == 7
    # A cache that cannot be written is no error: the page is drawn.
    (tmp_path / "a-file").write_bytes(b"")
    assert render_report_html(batch_report(mixed_sources()), plot_cache_dir=tmp_path / "a-file") == plain


def test_write_report_html_is_atomic(tmp_path):
    report = batch_report(mixed_sources())
    dest = tmp_path / "podcast" / "report.html"
    assert write_report_html(report, dest) == dest
    assert dest.read_text(encoding="utf-8") == render_report_html(report)
    write_report_html(batch_report(mixed_sources(), stopped="SIGTERM: stop"), str(dest))  # replaces
    assert "SIGTERM: stop" in dest.read_text(encoding="utf-8")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report.html"]  # no temporary left
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(OSError):
        write_report_html(report, tmp_path / "a-file" / "report.html")  # a file where the folder goes
    (tmp_path / "report.html").mkdir()
    with pytest.raises(OSError):
        write_report_html(report, tmp_path / "report.html")  # a folder in the way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "podcast", "report.html"]  # no temporary
    assert list((tmp_path / "report.html").iterdir()) == []


def test_twenty_files_render_in_seconds():
    sources = []
    for i in range(20):
        long = synthetic_series(seconds=1200 * 0.5, level_lufs=-20 - i % 5, hop_s=0.5, seed=i)  # 1200 points
        sources.append(SourceOutcome(path=f"/in/episode-{i:02d}.wav", verdict="published", integrated_lufs_in=-20.0,
                                     true_peak_dbtp_in=-3.0, series_in=long,
                                     renditions=[rendition(n, series=long) for n in ("mp3-128k", "aac-96k", "opus")]))
    report = batch_report(sources)
    render_report_html(report)  # matplotlib's first import and font cache are not the batch's cost
    started = time.perf_counter()
    page = render_report_html(report)
    elapsed_s = time.perf_counter() - started
    assert len(svgs(page)) == 20
    assert elapsed_s < 15.0, f"{elapsed_s:.1f} s for 20 files"
    assert len(page.encode()) < 8_000_000


# --------------------------------------------------------------------------- in a real browser


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_page_renders_in_chromium(tmp_path):
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip("headless Chromium not installed at /usr/bin/chromium (apt-get install chromium)")
    from PIL import Image  # Pillow: a dependency of matplotlib

    sources = mixed_sources() + real_sources()
    report = batch_report(sources)
    page_path = write_report_html(report, tmp_path / "out" / "report.html")
    url = page_path.resolve().as_uri()

    dom = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<table" in dom.stdout
    assert len(re.findall(r"<svg\b", dom.stdout)) == with_series(report) == 3
    assert len(re.findall(r"<path\b", dom.stdout)) > 50  # the plots' lines, ticks and band were parsed as SVG

    png = tmp_path / "report.png"
    shot = chromium(f"--screenshot={png}", "--window-size=1280,2400", url, profile=tmp_path / "profile-shot")
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    assert pixels.shape[:2] == (2400, 1280)
    assert pixels.std() > 20  # not blank
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    blue = (r < 90) & (g > 90) & (g < 150) & (b > 150)  # the first rendition's line (#1f77b4)
    band = (abs(r - 217) < 12) & (abs(g - 237) < 12) & (abs(b - 217) < 12)  # target band: green at 18 %
    red = (r > 180) & (g < 90) & (b < 90)  # ceiling (#d62728) and the failed badge
    assert blue.sum() > 500 and band.sum() > 5_000 and red.sum() > 100, (blue.sum(), band.sum(), red.sum())
    band_rows = np.flatnonzero(band.sum(axis=1) > 300)  # a band spans most of a plot's width
    assert band_rows.size > 10 and band_rows.min() > 600  # the first plot: below the header and the table
