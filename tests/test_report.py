"""`parity report`: one self-contained HTML file from a full check (--layers --grads --train-steps 5)
and a bench result, checked with an HTML parser and, where Chromium is installed, in a headless
browser (`make test-report-browser` installs it); the bench plot's legend and skipped runtimes."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from diagnostics_cache import full_check
from report_cache import small_bench

from parity.cli import main
from parity.report.html import SECTIONS, render

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser")) if p), None)


class _Page(HTMLParser):
    """Sections by id with their text, every tag, and every external reference."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.svgs_in: dict[str, int] = {}
        self.tags: list[str] = []
        self.external: list[str] = []
        self._section: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections[self._section or ""] = []
        if tag == "svg" and self._section:
            self.svgs_in[self._section] = self.svgs_in.get(self._section, 0) + 1
        for key in ("src", "href", "xlink:href"):
            ref = a.get(key)
            if ref and not ref.startswith("#"):
                self.external.append(f"{tag} {key}={ref}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section is not None and data.strip():
            self.sections[self._section].append(data.strip())


def _results() -> list[tuple[str, dict]]:
    check = json.loads(json.dumps(full_check("mlp").to_dict()))
    return [("check.json", check), ("bench.json", json.loads(json.dumps(small_bench())))]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    paths = []
    for name, data in _results():
        (folder / name).write_text(json.dumps(data))
        paths.append(str(folder / name))
    out = folder / "report.html"
    assert main(["report", *paths, "-o", str(out)]) == 0
    return out


def test_every_section_is_there_with_its_numbers(report: Path) -> None:
    page = _Page()
    page.feed(report.read_text())
    assert list(page.sections) == list(SECTIONS)
    text = {k: " ".join(v) for k, v in page.sections.items()}
    check, bench = _results()[0][1], _results()[1][1]
    assert "|a-b| <= atol + rtol*|b|" in text["parity"]
    assert f"{check['comparisons'][0]['max_abs']:.2e}" in text["parity"]
    assert all(row["layer"] in text["layers"] for row in check["layers"]["rows"])  # by layer name
    assert all(p["name"] in text["gradients"] for p in check["gradients"]["parameters"])
    for name, run in check["training"]["runs"].items():  # each optimizer's losses in both frameworks
        assert f"{name}:" in text["training"] and f"{run['losses'][-1]['tf']}" in text["training"]
    assert all(s in text["decision"] for s in bench["decision"]["sentences"][:2])
    assert "ort-cuda" in text["skipped"] and "CUDAExecutionProvider" in text["skipped"]
    assert "Measured peak" in text["roofline"]
    # one plot each: layer error by name, loss curves of both frameworks, latency and throughput
    assert page.svgs_in == {"layers": 1, "training": 1, "latency": 1}


def test_the_file_is_self_contained(report: Path) -> None:
    html = report.read_text()
    page = _Page()
    page.feed(html)
    assert page.external == []  # no script, stylesheet, image or font fetched from anywhere
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert "<style>" in html
    # the only URIs are the SVG namespaces, names that are never fetched
    assert set(re.findall(r"https?://[^\"' ]+", html)) <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert render(_results()) == html  # no timestamp, no random id: the same results give the same file


def test_names_from_results_are_escaped() -> None:
    results = copy.deepcopy(_results())
    results[0][1]["model"] = "<script>alert(1)</script>"
    results[0][1]["layers"]["rows"][0]["layer"] = "a<b>&c"
    html = render(results)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&lt;b&gt;&amp;c" in html


def test_a_missing_or_foreign_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert main(["report", str(tmp_path / "x.json"), "-o", str(tmp_path / "r.html")]) == 2
    assert main(["report", str(tmp_path / "none.json"), "-o", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()


def test_bench_plot_shows_every_runtime_and_the_skipped_ones(tmp_path: Path) -> None:
    from parity.bench.plot import bench_figure

    fig = bench_figure(small_bench())
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["torch-eager", "tf-function", "ort-cpu"]
    latency, throughput = fig.axes[:2]
    assert latency.get_legend() is None and throughput.get_legend() is None  # the figure legend serves both
    # the legend sits outside both panels: it cannot hide a line or a bar
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(box.x0 >= ax.get_window_extent().x1 for ax in (latency, throughput))
    assert len(latency.collections) >= 3  # one spread band per runtime
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "not measured" in notes and "ort-cuda" in notes


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine; `make test-report-browser` installs it")
def test_headless_chromium_renders_every_section_and_plot(report: Path, tmp_path: Path) -> None:
    offline = ["--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
               "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *offline, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    page = _Page()
    page.feed(dom)
    assert list(page.sections) == list(SECTIONS) and page.svgs_in == {"layers": 1, "training": 1, "latency": 1}
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *offline, f"--screenshot={shot}", "--window-size=1400,9000", report.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    # the plots are drawn: matplotlib's first colour (C0, #1f77b4) fills many pixels of the page
    c0 = np.all(np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.04, axis=-1)
    assert c0.sum() > 500, f"only {c0.sum()} pixels of the plots' blue: the SVG plots did not render"


# ============================================================================ the command line around it


def test_check_all_counts_and_times_each_check(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import parity.check
    import zoo

    result = full_check("mlp")
    monkeypatch.setattr(zoo, "names", lambda: ["mlp", "cnn"])
    monkeypatch.setattr(parity.check, "run_check", lambda options, **kw: result)
    assert main(["check", "--all", "--from", "torch", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\[1/2\] mlp torch -> tf \.\.\. PASSED \d+\.\d s$", out, re.M)
    assert re.search(r"^\[2/2\] cnn torch -> tf \.\.\. PASSED \d+\.\d s$", out, re.M)
    assert re.search(r"^2 of 2 checks passed in \d+\.\d s$", out, re.M)


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and re.fullmatch(r"parity \S+.*\n", capsys.readouterr().out)


def test_tensorflow_start_up_lines_are_dropped_and_nothing_else(tmp_path: Path) -> None:
    """The filter on a real file descriptor: a child process writes TF's lines and ours to fd 2."""
    import sys

    from parity.cli.quiet import is_noise

    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795786099.886728   31195 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1795786099.887818   31195 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
        "will not be used.",
        "E0000 00:00:1795786107.303758   31195 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)",
    ]
    kept = ["[parity] running tf", "E0000 00:00:1.0   1 op_kernel.cc:1] OOM when allocating tensor",
            "Traceback (most recent call last):"]
    assert all(is_noise(line) for line in lines) and not any(is_noise(line) for line in kept)
    (tmp_path / "lines.txt").write_text("\n".join(lines[:2] + kept[:1] + lines[2:] + kept[1:]) + "\n")
    script = tmp_path / "child.py"
    script.write_text("import os, sys\nfrom parity.cli.quiet import filtered_stderr\n"
                      "with filtered_stderr(force=True):\n"
                      f"    os.write(2, open({str(tmp_path / 'lines.txt')!r}, 'rb').read())\n")
    child = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).parents[1], check=True)
    assert child.stderr.splitlines() == kept


def test_the_layer_plot_draws_the_rule_of_the_table() -> None:
    """The plotted value is max |a-b| / (atol + rtol |b|) with the tolerance line at 1, so a row over
    atol but within atol + rtol |b| sits below the line, as the table's verdict says."""
    from parity.report.figures import layer_figure

    rows = [{"layer": "conv1", "max_abs": 2e-5, "atol": 1e-5, "rtol": 1e-4, "ratio": 0.4, "passed": True},
            {"layer": "fc", "max_abs": 9e-5, "atol": 1e-5, "rtol": 1e-5, "ratio": 3.0, "passed": False}]
    ax = layer_figure(rows, "t").axes[0]
    assert "rtol" in ax.get_ylabel()
    values = list(ax.lines[0].get_ydata())
    assert values == [0.4, 3.0]
    line = ax.lines[1]
    assert list(line.get_ydata()) == [1.0, 1.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "fc"]
