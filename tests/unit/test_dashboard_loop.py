"""The dashboard's Loop page: the rounds CSV of the living loop as a chart, a table and JSON."""

from __future__ import annotations

import math
import re
from html import unescape

import pytest
from fastapi.testclient import TestClient

from bartops.dashboard import create_app, svg
from bartops.dashboard.views import loop_view, read_loop
from bartops.loop.record import write_rounds
from test_dashboard_support import loop_records


def text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


@pytest.fixture()
def registry_root(tmp_path):
    root = tmp_path / "registry"
    for v in ("v1", "v2"):  # registered versions (a directory under versions/ is enough to link them)
        (root / "versions" / v).mkdir(parents=True)
    return root


@pytest.fixture()
def loop_file(tmp_path):
    return tmp_path / "build" / "loop" / "rounds.csv"


@pytest.fixture()
def client(registry_root, loop_file):
    return TestClient(create_app(registry_root, loop_file=loop_file))


def test_loop_page_shows_the_chart_and_one_row_per_round(client, loop_file):
    write_rounds(loop_records(mismatch_round=4), loop_file)
    r = client.get("/loop")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # the chart: inline SVG with both series, the two reference lines, a legend and axis labels
    chart = r.text[r.text.index('<figure id="loop-chart">'):r.text.index("</figure>", r.text.index('id="loop-chart"'))]
    assert chart.count('class="true-point"') == 6 and chart.count('class="online-point"') == 5  # round 0: no traffic
    assert 'class="ref oracle"' in chart and 'class="ref logging"' in chart
    assert "oracle 7.60" in chart and "logging policy 5.51" in chart
    assert ">round</text>" in chart and "streams per page view</text>" in chart and 'class="legend"' in chart
    # the table
    rows = re.findall(r'<tr data-round="(\d+)"( class="mismatch")?>', r.text)
    assert [int(n) for n, _ in rows] == list(range(6))
    assert [n for n, m in rows if m] == ["4"]
    row = {n: text(m) for n, m in re.findall(r'<tr data-round="(\d+)"[^>]*>(.*?)</tr>', r.text, re.S)}
    assert row["5"].split()[:6] == ["5", "v5", "2,000", "6.858", "±", "0.024"]
    assert "90.0%" in row["5"] and "6.898 [6.768, 7.028]" in row["5"] and "reject" in row["5"]
    assert "0.050 [-0.070, 0.170]" in row["5"] and "0.020" in row["5"] and "56.0" in row["5"]
    assert "promote" in row["1"] and "0.580 [0.460, 0.700]" in row["1"] and "0.610" in row["1"]
    assert "95,936" in row["4"] and row["4"].count("96,000") == 3
    assert row["0"].split()[:4] == ["0", "v1", "0", "5.479"]
    # registered versions link to their candidate page, the others are plain text
    assert '<a href="/candidates/v1">v1</a>' in r.text and '<a href="/candidates/v2">v2</a>' in r.text
    assert 'href="/candidates/v5"' not in r.text and 'href="/candidates/v3"' not in r.text
    assert 'class="badge promoted">promote<' in r.text and 'class="badge rejected">reject<' in r.text
    t = text(r.text)
    assert "6 rounds. Round 5: live v5 , true value 6.858 (90.0% of the oracle); oracle 7.602, logging policy 5.510" in t
    assert "3 promoted, 2 rejected" in t and "differ in round 4" in t
    assert "http://" not in r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_every_page_links_to_the_loop(client):
    for path in ("/", "/loop", "/candidates/nope"):
        assert '<a href="/loop" id="loop-link">loop</a>' in client.get(path).text


def test_missing_loop_file_says_how_to_produce_it(client, loop_file):
    r = client.get("/loop")
    assert r.status_code == 200 and 'id="loop-empty"' in r.text
    t = text(r.text)
    assert f"{loop_file} does not exist" in t and "make loop" in t and "bartops loop --rounds 5" in t
    assert "<svg" not in r.text and 'id="rounds"' not in r.text
    assert client.get("/api/loop").json() == []


def test_loop_file_without_rounds(client, loop_file):
    write_rounds([], loop_file)
    r = client.get("/loop")
    assert r.status_code == 200 and "holds no rounds yet" in text(r.text) and 'id="rounds"' not in r.text


@pytest.mark.parametrize("content, problem", [
    ("round,live_version\n0,v1\n", "lacks the column(s)"),  # columns missing
    (None, "ValueError: invalid literal for int()"),  # a bad number on line 3
    (b"round\n\xff\xfe\n", "UnicodeDecodeError"),  # not UTF-8
])
def test_malformed_loop_file_is_an_error_box_not_a_500(client, loop_file, content, problem):
    if content is None:
        write_rounds(loop_records(), loop_file)
        lines = loop_file.read_text().splitlines()
        lines[2] = lines[2].replace("1,v1,2000", "1,v1,many", 1)
        loop_file.write_text("\n".join(lines) + "\n")
    elif isinstance(content, bytes):
        loop_file.parent.mkdir(parents=True)
        loop_file.write_bytes(content)
    else:
        loop_file.parent.mkdir(parents=True)
        loop_file.write_text(content)
    r = client.get("/loop")
    assert r.status_code == 200 and 'id="loop-error"' in r.text and "Traceback" not in r.text
    box = text(r.text[r.text.index('id="loop-error"'):r.text.index("</div>", r.text.index('id="loop-error"'))])
    assert str(loop_file) in box and problem in box
    if content is None:
        assert "line 3" in box
    api = client.get("/api/loop")
    assert api.status_code == 500 and str(loop_file) in api.json()["detail"] and problem in api.json()["detail"]


def test_api_loop_returns_the_rounds_with_nan_as_null(client, loop_file):
    records = loop_records()
    write_rounds(records, loop_file)
    data = client.get("/api/loop").json()
    assert isinstance(data, list) and [d["round"] for d in data] == list(range(6))
    assert set(data[0]) == set(records[0].__dataclass_fields__)
    assert data[0]["online_rate"] is None and data[0]["dr_lift"] is None and data[0]["decision"] == ""
    assert data[5]["live_version"] == "v5" and data[5]["decision"] == "reject"
    assert data[5]["true_value"] == pytest.approx(records[5].true_value) and data[4]["accepted"] == 95_936


def test_default_loop_file_comes_from_params(tmp_path, monkeypatch):
    from bartops.dashboard.app import default_loop_file

    params = tmp_path / "params.yaml"
    params.write_text("paths:\n  build: out/derived\n")
    monkeypatch.setenv("BARTOPS_PARAMS", str(params))
    assert str(default_loop_file()) == "out/derived/loop/rounds.csv"
    monkeypatch.setenv("BARTOPS_PARAMS", str(tmp_path / "missing.yaml"))
    assert str(default_loop_file()) == "build/loop/rounds.csv"


# ---------------------------------------------------------------------- pure view model and chart
def test_loop_view_references_are_means_and_flags():
    view = loop_view(loop_records(mismatch_round=2), registered=["v3"])
    assert view["oracle_value"] == pytest.approx(sum([7.61, 7.58, 7.63, 7.60, 7.57, 7.62]) / 6)
    assert view["logging_value"] == pytest.approx(sum([5.52, 5.49, 5.55, 5.50, 5.47, 5.53]) / 6)
    assert view["mismatched_rounds"] == [2] and view["promotions"] == 3 and view["rejections"] == 2
    rows = view["rows"]
    assert [r["decision_status"] for r in rows] == ["pending", "promoted", "promoted", "rejected", "promoted", "rejected"]
    assert [r["live_registered"] for r in rows] == [False, False, False, True, True, False]
    assert rows[2]["candidate_registered"] and not rows[0]["candidate_registered"]
    assert rows[0]["online_rate"] is None and view["latest"]["round"] == 5
    assert loop_view([])["rows"] == [] and loop_view([])["oracle_value"] is None


def test_read_loop_of_a_missing_file(tmp_path):
    view = read_loop(tmp_path / "none.csv")
    assert view["exists"] is False and view["error"] is None and view["rows"] == []


def test_loop_svg_handles_one_round_and_missing_values():
    one = svg.loop_svg([{"round": 0, "true_value": 5.0, "true_value_se": math.nan, "online_rate": None,
                         "online_rate_lo": None, "online_rate_hi": None}], None, 7.5)
    assert one.startswith("<svg") and one.count('class="true-point"') == 1 and 'class="ref oracle"' in one
    assert 'class="ref logging"' not in one and "nan" not in one.lower().replace("span", "")
    assert 'class="plot empty"' in svg.loop_svg([])
    assert 'class="plot empty"' in svg.loop_svg([{"round": 0, "true_value": None}])
    # a gap in the online rate breaks its line and its band into two pieces
    rows = [{"round": i, "true_value": 6.0 + i / 10, "true_value_se": 0.01, "online_rate": v,
             "online_rate_lo": None if v is None else v - 0.1, "online_rate_hi": None if v is None else v + 0.1}
            for i, v in enumerate([6.0, 6.1, None, 6.3, 6.4])]
    gap = svg.loop_svg(rows, 5.5, 7.6)
    assert gap.count('class="online-band"') == 2 and gap.count('class="online-point"') == 4
    online_path = re.search(r'<path class="online-line" d="([^"]+)"', gap).group(1)
    assert online_path.count("M") == 2 and gap.count('class="whisker"') == 5


def test_nice_ticks_cover_the_range():
    y0, y1, ticks = svg._nice_ticks(5.43, 7.63)
    assert y0 <= 5.43 and y1 >= 7.63 and ticks[0] == y0 and ticks[-1] == y1 and 4 <= len(ticks) <= 7
    assert svg._nice_ticks(2.0, 2.0)[0] < 2.0 < svg._nice_ticks(2.0, 2.0)[1]
