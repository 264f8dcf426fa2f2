"""Jinja2 templates of the dashboard, kept in Python so the package needs no data files.

Inline CSS only; no scripts, fonts or images from anywhere else (the machine may be offline).
"""

from __future__ import annotations

BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}bartops review{% endblock %}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #fff; }
  header { background: #24292f; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
  header a { color: #fff; text-decoration: none; font-weight: 600; }
  header .prod { color: #9be9a8; }
  main { padding: 16px 24px 48px; max-width: 1280px; }
  h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
  table { border-collapse: collapse; margin: 6px 0; }
  th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: #f6f8fa; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
  .awaiting_approval { background: #fff8c5; color: #7d4e00; border: 1px solid #d4a72c; }
  .promoted { background: #dafbe1; color: #116329; border: 1px solid #4ac26b; }
  .rejected { background: #ffebe9; color: #a40e26; border: 1px solid #ff8182; }
  .pending { background: #eaeef2; color: #424a53; border: 1px solid #afb8c1; }
  .production { background: #0969da; color: #fff; }
  .pass { color: #116329; font-weight: 600; } .fail { color: #a40e26; font-weight: 600; } .unknown { color: #6e7781; }
  .na { color: #6e7781; font-style: italic; }
  .flash { padding: 8px 12px; border-radius: 6px; margin: 8px 0; }
  .flash.ok { background: #dafbe1; border: 1px solid #4ac26b; } .flash.err { background: #ffebe9; border: 1px solid #ff8182; }
  .plots { display: flex; flex-wrap: wrap; gap: 24px; }
  .plots figure { margin: 0; } figcaption { font-size: 12px; color: #57606a; max-width: 360px; }
  .review { border: 2px solid #d4a72c; background: #fffdf0; border-radius: 8px; padding: 12px 16px; max-width: 640px; }
  .review textarea { width: 100%; min-height: 60px; font: inherit; }
  .review input[type=text], .login input { font: inherit; }
  header .who { margin-left: auto; color: #d0d7de; } header form { display: inline; }
  header button.link { background: none; border: none; color: #fff; padding: 0; text-decoration: underline; }
  button { font: inherit; padding: 6px 16px; border-radius: 6px; border: 1px solid #8c959f; cursor: pointer; }
  button.approve { background: #1f883d; color: #fff; border-color: #1a7f37; }
  button.reject { background: #cf222e; color: #fff; border-color: #a40e26; }
  .page { border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 12px; margin: 10px 0; background: #0d1117; color: #e6edf3; }
  .page h3 { font-size: 14px; margin: 2px 0 6px; color: #8b949e; font-weight: 500; }
  .shelf h4 { margin: 8px 0 4px; font-size: 15px; color: #fff; }
  .cards { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 4px; }
  .card { flex: 0 0 128px; background: #21262d; border-radius: 6px; padding: 6px 8px; font-size: 12px; }
  .card .cover { height: 52px; border-radius: 4px; margin-bottom: 4px; }
  .card .name { color: #fff; font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .card .artist { color: #8b949e; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .card .p { color: #6e7681; font-size: 11px; } .card.explored { outline: 1px dashed #d29922; }
  pre { background: #f6f8fa; padding: 8px; border-radius: 6px; overflow-x: auto; font-size: 12px; max-height: 360px; }
  details summary { cursor: pointer; color: #0969da; }
  #rounds td { white-space: nowrap; }
  td.mismatch { background: #ffebe9; color: #a40e26; font-weight: 600; }
  .sub { color: #6e7781; font-size: 12px; }
  code.cmd { background: #f6f8fa; padding: 1px 5px; border-radius: 4px; }
</style>
</head>
<body>
<header><a href="/">bartops review</a>
  <span>production: {% if production %}<a class="prod" href="/candidates/{{ production }}">{{ production }}</a>{% else %}<span class="na">none</span>{% endif %}</span>
  <a href="/loop" id="loop-link">loop</a>
  <span class="who">{% if auth.user %}signed in as <b id="user">{{ auth.user }}</b>
    <form method="post" action="/logout"><input type="hidden" name="csrf_token" value="{{ auth.csrf }}">
    <button class="link" type="submit" id="logout">log out</button></form>
  {%- elif auth.reviewers %}<a href="/login?next={{ path|urlencode }}" id="login-link">reviewer log in</a>{% endif %}</span>
</header>
<main>
{% if flash %}<div class="flash {{ 'err' if flash_error else 'ok' }}" id="flash">{{ flash }}</div>{% endif %}
{% block content %}{% endblock %}
</main>
</body>
</html>
"""

MACROS = """
{% macro num(x, digits=4) -%}
{%- if x is none -%}<span class="na">–</span>
{%- elif x is number -%}{{ fmt(x, digits) }}
{%- else -%}{{ x }}{%- endif -%}
{%- endmacro %}
{% macro ci(e) -%}
{%- if e is none or (e.ci_low is none and e.ci_high is none) -%}<span class="na">–</span>
{%- else -%}[{{ num(e.ci_low) }}, {{ num(e.ci_high) }}]{%- endif -%}
{%- endmacro %}
{% macro status(s, label) -%}<span class="badge {{ s }}">{{ label }}</span>{%- endmacro %}
{% macro passfail(p) -%}
{%- if p is sameas true -%}<span class="pass">pass</span>
{%- elif p is sameas false -%}<span class="fail">fail</span>
{%- else -%}<span class="unknown">?</span>{%- endif -%}
{%- endmacro %}
{% macro na(what) -%}<p class="na">{{ what }}: not available</p>{%- endmacro %}
"""

INDEX = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block content %}
<h1>Candidates</h1>
{% if rows %}
<table id="candidates">
<thead><tr><th>version</th><th>registered</th><th>gate</th><th>difference vs production</th><th>95% CI</th><th></th></tr></thead>
<tbody>
{% for r in rows %}
<tr data-version="{{ r.version }}" data-status="{{ r.status }}">
  <td><a href="/candidates/{{ r.version }}">{{ r.version }}</a>
      {% if r.production %} <span class="badge production">production</span>{% endif %}
      {% if r.was_production %} <span class="badge pending">was production</span>{% endif %}</td>
  <td>{{ r.registered_at or "" }}</td>
  <td>{{ m.status(r.status, r.status_label) }}{% if r.failed %} <span class="na">failed: {{ r.failed|join(", ") }}</span>{% endif %}</td>
  {% if r.headline %}
  <td class="num">{{ m.num(r.headline.value) }} <span class="na">({{ r.headline.estimator }})</span></td>
  <td class="num">[{{ m.num(r.headline.ci_low) }}, {{ m.num(r.headline.ci_high) }}]</td>
  {% else %}<td class="na">–</td><td class="na">–</td>{% endif %}
  <td>{% if r.can_review %}<a href="/candidates/{{ r.version }}#review">review</a>{% endif %}</td>
</tr>
{% endfor %}
</tbody></table>
{% else %}
<p class="na" id="no-candidates">No versions registered in {{ root }}.</p>
{% endif %}

<h2>Production history</h2>
{% if prod.history %}
<table id="history"><thead><tr><th>#</th><th>when</th><th>action</th><th>from</th><th>to</th><th>reason</th></tr></thead>
<tbody>{% for e in prod.history %}
<tr><td class="num">{{ e.seq }}</td><td>{{ e.at }}</td><td>{{ e.action }}</td><td>{{ e.previous or "–" }}</td>
<td><a href="/candidates/{{ e.version }}">{{ e.version }}</a></td><td>{{ e.reason }}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p class="na">No promotions yet.</p>{% endif %}
{% endblock %}
"""

CANDIDATE = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block title %}{{ d.version }} · bartops review{% endblock %}
{% block content %}
<h1>{{ d.version }} {{ m.status(d.status, d.status_label) }}
{% if d.production %}<span class="badge production">production</span>{% endif %}</h1>
<p>Registered {{ d.registered_at or "–" }}. Compared with
{% if d.baseline %}<b>{{ d.baseline }}</b>{% elif d.production_version and not d.production %}production <b>{{ d.production_version }}</b>{% else %}the logging policy{% endif %}.
{% if d.decision %}Gate decision: <b>{{ d.decision }}</b>.{% endif %}
{% if d.reason %}<br>{{ d.reason }}{% endif %}</p>
{% if d.gate_error %}<p class="fail" id="gate-error">{{ d.gate_error }}</p>{% endif %}

{% if d.status == "awaiting_approval" %}
<section class="review" id="review">
  <h2 style="margin-top:4px">Review</h2>
  {% if d.can_review %}
  <p>The gate flow run <code>{{ d.flow_run_id }}</code> is paused and waits for your answer.</p>
  {% if auth.user %}
  <form method="post" action="/candidates/{{ d.version }}/review">
    <input type="hidden" name="csrf_token" value="{{ auth.csrf }}">
    <p>Reviewing as <b id="reviewer">{{ auth.user }}</b>: your name is recorded with the decision.</p>
    <p><label for="comment">Comment</label><br><textarea id="comment" name="comment" placeholder="why"></textarea></p>
    <button class="approve" type="submit" name="decision" value="approve">Approve</button>
    <button class="reject" type="submit" name="decision" value="reject">Reject</button>
  </form>
  {% elif auth.reviewers %}
  <p id="login-needed">Approving or rejecting needs a reviewer:
    <a href="/login?next={{ ('/candidates/' ~ d.version)|urlencode }}">log in</a> first.</p>
  {% else %}
  <p class="fail" id="no-reviewers">{{ auth.problem or "No reviewers are configured, so no one can approve or reject here." }}
    Add one on the dashboard's machine with <code class="cmd">{{ auth.hint }}</code> (it asks for a password and
    writes <code>{{ auth.file }}</code>), then log in.</p>
  <button class="approve" type="button" disabled title="add a reviewer first">Approve</button>
  <button class="reject" type="button" disabled title="add a reviewer first">Reject</button>
  {% endif %}
  {% else %}
  <p class="fail">This version awaits approval but its gate decision records no flow run id, so it cannot be resumed from here.</p>
  {% endif %}
</section>
{% elif d.approval %}
<h2>Review</h2>
<table><tbody>{% for k, v in d.approval.items() %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</tbody></table>
{% endif %}

<h2>Off-policy evaluation against production</h2>
{% if d.ope %}
<table id="ope">
<thead>
<tr><th rowspan="2">estimator</th><th colspan="5">candidate</th><th colspan="2">production</th><th colspan="2">candidate − production</th></tr>
<tr><th>value</th><th>95% CI</th><th>ESS</th><th>max weight</th><th>support</th><th>value</th><th>95% CI</th><th>value</th><th>95% CI</th></tr>
</thead><tbody>
{% for r in d.ope %}{% set c, p, x = r.candidate, r.production, r.difference %}
<tr{% if d.estimator and r.estimator|lower == d.estimator|lower %} class="gate-estimator" style="font-weight:600"{% endif %}>
<td>{{ r.estimator }}</td>
<td class="num">{{ m.num(c.value if c else none) }}</td><td class="num">{{ m.ci(c) }}</td>
<td class="num">{{ m.num(c.ess if c else none, 0) }}</td><td class="num">{{ m.num(c.max_weight if c else none, 2) }}</td>
<td class="num">{{ m.num(c.support if c else none, 3) }}</td>
<td class="num">{{ m.num(p.value if p else none) }}</td><td class="num">{{ m.ci(p) }}</td>
<td class="num">{{ m.num(x.value if x else none) }}</td><td class="num">{{ m.ci(x) }}</td>
</tr>{% endfor %}
</tbody></table>
<figure>{{ interval_plot|safe }}<figcaption>Candidate − production per estimator with its 95% interval{% if d.margin is not none %}; the dashed line is the gate margin {{ m.num(d.margin) }}{% endif %}.{% if d.interval_scope %} {{ d.interval_scope }}{% endif %}</figcaption></figure>
{% else %}{{ m.na("OPE estimates") }}{% endif %}

<h2>Gate rules</h2>
{% if d.rules %}
<table id="rules"><thead><tr><th>rule</th><th>figure</th><th>threshold</th><th>result</th><th>detail</th></tr></thead>
<tbody>{% for r in d.rules %}
<tr><td>{{ r.rule }}</td><td class="num">{{ m.num(r.value) }}</td>
<td class="num">{{ m.num(r.threshold) }}</td><td>{{ m.passfail(r.passed) }}</td><td>{{ r.detail or "" }}</td></tr>
{% endfor %}</tbody></table>
{% else %}{{ m.na("gate rules") }}{% endif %}

<h2>Model diagnostics</h2>
<div class="plots">
<figure id="calibration">{% if d.calibration %}{{ calibration_plot|safe }}{% else %}{{ m.na("calibration") }}{% endif %}
<figcaption>Reliability diagram of the reward model on the validation split{% if d.ece is not none %}; ECE {{ m.num(d.ece) }}{% endif %}. Dot area ∝ rows in the bin.</figcaption></figure>
<figure id="weights">{% if d.weights %}{{ weights_plot|safe }}{% else %}{{ m.na("importance weights") }}{% endif %}
<figcaption>Importance weights (target / logging probability) of the logged cards{% if d.weights and d.weights.zeros %}; {{ d.weights.zeros }} zero weights not shown{% endif %}.</figcaption></figure>
</div>

<h2>Data validation</h2>
{% set v = d.validation %}
{% if v %}
<p id="validation-result">Validation {{ m.passfail(v.passed) }} <span class="na">(from {{ v.source }})</span></p>
{% if v.counts %}<table><tbody>{% for k, x in v.counts.items() %}<tr><th>{{ k }}</th><td class="num">{{ m.num(x, 0) }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if v.extra %}<table><tbody>{% for k, x in v.extra.items() %}<tr><th>{{ k }}</th><td>{{ m.num(x) }}</td></tr>{% endfor %}</tbody></table>{% endif %}
{% if v.results %}<details><summary>{{ v.results|length }} expectations</summary>
<table><thead><tr><th>expectation</th><th>result</th><th>detail</th></tr></thead><tbody>
{% for r in v.results %}<tr><td>{{ r.name }}</td><td>{{ m.passfail(r.success) }}</td><td>{{ m.num(r.detail) }}</td></tr>{% endfor %}
</tbody></table></details>{% endif %}
{% else %}{{ m.na("validation summary") }}{% endif %}

<h2>Lineage</h2>
{% set l = d.lineage %}
{% if l %}
<table id="lineage"><tbody>
<tr><th>data version</th><td>{{ m.num(l.data_version) }}</td></tr>
<tr><th>code version</th><td><code>{{ m.num(l.code_version) }}</code></td></tr>
<tr><th>features version</th><td>{{ m.num(l.features_version) }}</td></tr>
{% for k, x in l.facts.items() if k not in ("features_version",) %}<tr><th>{{ k }}</th><td>{{ m.num(x) }}</td></tr>{% endfor %}
</tbody></table>
{% if l.params %}<details><summary>params</summary><pre>{{ l.params|tojson(indent=2) }}</pre></details>{% endif %}
{% for k, x in l.other.items() %}<details><summary>{{ k }}</summary><pre>{{ x|tojson(indent=2) }}</pre></details>{% endfor %}
{% else %}{{ m.na("lineage") }}{% endif %}

<h2>Home-page preview</h2>
{% if preview.error %}<p class="na">preview not available: {{ preview.error }}</p>
{% elif not preview.pages %}{{ m.na("preview") }}
{% else %}
<p class="na">Pages this policy would serve (sampled with seed {{ seed }}, ε as configured; a dashed card was explored).</p>
{% for pg in preview.pages %}
<div class="page" data-user="{{ pg.user_id }}">
<h3>user {{ pg.user_id }}{% if pg.cold_start %} (new user){% endif %} · {{ pg.region }} · {{ pg.platform }}</h3>
{% for sh in pg.shelves %}
<div class="shelf"><h4>{{ sh.title }}</h4><div class="cards">
{% for c in sh.cards %}<div class="card{% if c.explored %} explored{% endif %}" title="item {{ c.item_id }}, p={{ fmt(c.propensity, 3) }}">
<div class="cover" style="background: hsl({{ (c.item_id * 47) % 360 }}, 45%, 38%)"></div>
<div class="name">{{ c.name }}</div><div class="artist">{{ c.artist }}</div><div class="p">p = {{ fmt(c.propensity, 3) }}</div></div>
{% endfor %}</div></div>
{% endfor %}
</div>
{% endfor %}
{% endif %}

<h2>Raw records</h2>
<details><summary>gate.json</summary><pre>{{ d.gate|tojson(indent=2) }}</pre></details>
<details><summary>metrics.json</summary><pre>{{ d.metrics|tojson(indent=2) }}</pre></details>
{% endblock %}
"""

ERROR = """{% extends "base.html" %}
{% block content %}<h1>{{ heading }}</h1><p>{{ message }}</p><p><a href="/">back to the candidates</a></p>{% endblock %}
"""

LOGIN = """{% extends "base.html" %}
{% block title %}log in · bartops review{% endblock %}
{% block content %}
<h1>Reviewer log in</h1>
{% if message %}<div class="flash err" id="flash">{{ message }}</div>{% endif %}
{% if auth.reviewers %}
<form class="login" method="post" action="/login">
  <input type="hidden" name="next" value="{{ next }}">
  <p><label>Name <input type="text" name="name" value="{{ login_name }}" autocomplete="username" required autofocus></label></p>
  <p><label>Password <input type="password" name="password" autocomplete="current-password" required></label></p>
  <button type="submit" id="login">Log in</button>
</form>
{% else %}
<p class="fail" id="no-reviewers">{{ auth.problem or "No reviewers are configured." }}
  Add one on the dashboard's machine with <code class="cmd">{{ auth.hint }}</code> (writes <code>{{ auth.file }}</code>).</p>
{% endif %}
{% endblock %}
"""

LOOP = """{% extends "base.html" %}{% import "macros.html" as m %}
{% block title %}loop · bartops review{% endblock %}
{% macro f(x, d=3) -%}
{%- if x is none -%}<span class="na">–</span>{%- else -%}{{ ("%." ~ d ~ "f")|format(x) }}{%- endif -%}
{%- endmacro %}
{% block content %}
<h1>Loop</h1>
<p class="sub">Simulated listeners against the live service, one row per round, scored against the simulator's truth
(values are streams per page view). Read from <code>{{ loop.file }}</code>.</p>
{% if loop.error %}
<div class="flash err" id="loop-error"><b>The loop file cannot be read.</b><br>{{ loop.error }}</div>
{% elif not loop.exists %}
<div class="flash" id="loop-empty" style="background:#f6f8fa;border:1px solid #d0d7de">
<b>No loop rounds yet:</b> <code>{{ loop.file }}</code> does not exist.<br>
Run <code class="cmd">make loop</code> or <code class="cmd">bartops loop --rounds 5</code> to play simulated listeners
against the live service round after round; each round adds a row here.</div>
{% elif not loop.rows %}
<p class="na" id="loop-empty"><code>{{ loop.file }}</code> holds no rounds yet.</p>
{% else %}
{% set last = loop.latest %}
<p id="loop-summary">{{ loop.rows|length }} round{{ "s" if loop.rows|length != 1 }}.
Round {{ last.round }}: live <b>{{ last.live_version or "–" }}</b>, true value <b>{{ f(last.true_value) }}</b>
{%- if last.oracle_share is not none %} ({{ "%.1f"|format(100 * last.oracle_share) }}% of the oracle){% endif %};
oracle {{ f(loop.oracle_value) }}, logging policy {{ f(loop.logging_value) }} (means over rounds).
{{ loop.promotions }} promoted, {{ loop.rejections }} rejected.
{% if loop.mismatched_rounds %}<span class="fail">The card counts (served, logged, joined, accepted) differ in
round{{ "s" if loop.mismatched_rounds|length != 1 }} {{ loop.mismatched_rounds|join(", ") }}.</span>{% endif %}</p>
<figure id="loop-chart">{{ chart|safe }}
<figcaption style="max-width:760px">Per round: the live policy's true value per page view (simulator, whiskers ±2 s.e.)
and the streams per page view observed online (band: its 95% interval). Dashed: the oracle and the logging policy,
means over the rounds' contexts.</figcaption></figure>

<h2>Rounds</h2>
<table id="rounds">
<thead>
<tr><th rowspan="2">round</th><th rowspan="2">live version</th><th rowspan="2">page views</th>
<th rowspan="2">true value</th><th rowspan="2">share of oracle</th><th rowspan="2">online rate [95% CI]</th>
<th rowspan="2">candidate</th>
<th rowspan="2">decision</th><th rowspan="2">DR lift [95% CI]</th><th rowspan="2">true lift</th>
<th colspan="4">cards: served = logged = joined = accepted</th><th rowspan="2">seconds</th></tr>
<tr><th>served</th><th>logged</th><th>joined</th><th>accepted</th></tr>
</thead><tbody>
{% for r in loop.rows %}
<tr data-round="{{ r.round }}"{% if not r.counts_match %} class="mismatch"{% endif %}>
<td class="num">{{ r.round }}</td>
<td>{% if r.live_registered %}<a href="/candidates/{{ r.live_version }}">{{ r.live_version }}</a>
{%- else %}{{ r.live_version or f(none) }}{% endif %}</td>
<td class="num">{{ m.num(r.page_views, 0) }}</td>
<td class="num true-value">{{ f(r.true_value) }}
{%- if r.true_value_se %} <span class="sub">± {{ f(2 * r.true_value_se) }}</span>{% endif %}</td>
<td class="num">{% if r.oracle_share is not none %}{{ "%.1f"|format(100 * r.oracle_share) }}%
{%- else %}{{ f(none) }}{% endif %}</td>
<td class="num">{% if r.online_rate is not none %}{{ f(r.online_rate) }}
<span class="sub">[{{ f(r.online_rate_lo) }}, {{ f(r.online_rate_hi) }}]</span>{% else %}{{ f(none) }}{% endif %}</td>
<td>{% if r.candidate_registered %}<a href="/candidates/{{ r.candidate_version }}">{{ r.candidate_version }}</a>
{%- else %}{{ r.candidate_version or f(none) }}{% endif %}</td>
<td>{% if r.decision %}{{ m.status(r.decision_status, r.decision) }}{% else %}{{ f(none) }}{% endif %}</td>
<td class="num">{% if r.dr_lift is not none %}{{ f(r.dr_lift) }}
<span class="sub">[{{ f(r.dr_lift_lo) }}, {{ f(r.dr_lift_hi) }}]</span>{% else %}{{ f(none) }}{% endif %}</td>
<td class="num">{{ f(r.true_lift) }}</td>
{% for k in ("served", "logged", "joined", "accepted") -%}
<td class="num count
{%- if not r.counts_match %} mismatch" title="served, logged, joined and accepted cards differ{% endif %}">
{{- m.num(r[k], 0) }}</td>
{% endfor -%}
<td class="num">{{ f(r.seconds, 1) }}</td>
</tr>
{% endfor %}
</tbody></table>
<p class="sub">JSON: <a href="/api/loop">/api/loop</a></p>
{% endif %}
{% endblock %}
"""

TEMPLATES = {"base.html": BASE, "macros.html": MACROS, "index.html": INDEX, "candidate.html": CANDIDATE,
             "error.html": ERROR, "loop.html": LOOP, "login.html": LOGIN}
