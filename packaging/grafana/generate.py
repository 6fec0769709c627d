#!/usr/bin/env python3
"""Generates the ProberMesh Grafana dashboards (probermesh-icmp.json, probermesh-http.json,
probermesh-agents.json) into this directory.

    python3 packaging/grafana/generate.py           # writes the JSON files
    python3 packaging/grafana/generate.py --check   # fails if the committed files differ

Current Grafana dashboard schema (schemaVersion 39, Grafana 10/11), a `datasource` variable
(any Prometheus), and the Go dashboards' variables: source_region, target_region (the Go
HTTP dashboard's "project") and target_addr, multi-select with All (= ".*"). Every query of
every panel and variable is run against a real Prometheus scraping a live mesh by
bins/probermesh/tests/dashboards.rs. Standard library only.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
ICMP_F = 'source_region=~"$source_region",target_region=~"$target_region"'
HTTP_F = ICMP_F + ',target_addr=~"$target_addr"'
PAIR = "source_region, target_region"


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_var(name, label, query, sort=1):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": sort,
        "hide": 0,
    }


def target(expr, legend="", ref="A", instant=False, table=False):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    if table:
        t["format"] = "table"
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows."""

    def __init__(self):
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1
        self.panels = []

    def add(self, panel, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.add({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0


def thresholds(*steps):
    out = [{"color": "green", "value": None}]
    for value, color in steps:
        out.append({"color": color, "value": value})
    return {"mode": "absolute", "steps": out}


def stat(title, expr, unit="none", steps=(), description=""):
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": thresholds(*steps)}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
    }


def timeseries(title, targets, unit, description="", stack=False):
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
        custom["fillOpacity"] = 40
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title, columns, join_by, description="", overrides=(), transformations=None):
    """An instant table: one query per column (`columns` is a list of (header, expr, unit))."""
    targets, renames, field_overrides = [], {}, list(overrides)
    for i, (header, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + i)
        targets.append(target(expr, ref=ref, instant=True, table=True))
        renames[f"Value #{ref}"] = header
        field_overrides.append({"matcher": {"id": "byName", "options": header}, "properties": [{"id": "unit", "value": unit}]})
    if transformations is None:
        transformations = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": renames, "indexByName": {}}},
        ]
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "transformations": transformations,
        "fieldConfig": {"defaults": {"custom": {"align": "auto", "filterable": True}}, "overrides": field_overrides},
        "options": {"showHeader": True, "sortBy": [{"displayName": join_by, "desc": False}]},
    }


def dashboard(uid, title, tags, variables, layout, time_from, description):
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [{"title": "ProberMesh", "type": "dashboards", "tags": ["probermesh"], "asDropdown": True}],
        "templating": {"list": [datasource_var()] + variables},
        "panels": layout.panels,
    }


def icmp():
    l = Layout()
    l.row("Overview")
    l.add(stat("Agents alive", "count(prober_agent_is_alive == 1) or vector(0)", steps=()), 4, 4)
    l.add(stat("Region pairs failing", f"count(sum by ({PAIR}) (prober_icmp_failed{{{ICMP_F}}}) > 0) or vector(0)", steps=((1, "red"),),
               description="Source × target region pairs with at least one failed ICMP result (no echo back, or no echo sent) in the last window."), 4, 4)
    l.add(stat("Worst pair loss", f"max(prober_icmp_packet_loss_rate{{{ICMP_F}}})", unit="percent", steps=((1, "yellow"), (5, "red"))), 4, 4)
    l.add(stat("Results received /s", 'sum(rate(prober_server_receive_points{prober_type="icmp"}[$__rate_interval]))', unit="reqps"), 4, 4)
    l.add(stat("Median RTT (all pairs)", f"histogram_quantile(0.5, sum by (le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", unit="s"), 4, 4)
    l.add(stat("p90 RTT (all pairs)", f"histogram_quantile(0.9, sum by (le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", unit="s"), 4, 4)
    loss_matrix = (
        f"max by ({PAIR}) (prober_icmp_packet_loss_rate{{{ICMP_F}}})"
        f" or max by ({PAIR}) (prober_icmp_failed{{{ICMP_F}}} > 0) * 0 + 100"
    )
    heat = table(
        "Loss heatmap: source region (rows) × target region (columns)",
        [("loss", loss_matrix, "percent")],
        "source_region",
        description="ICMP loss per region pair, in percent. A pair whose every probe failed (no echo back) shows 100.",
        transformations=[
            {"id": "groupingToMatrix", "options": {"rowField": "source_region", "columnField": "target_region", "valueField": "Value", "emptyValue": "null"}},
        ],
    )
    heat["fieldConfig"]["defaults"].update(
        {
            "unit": "percent",
            "decimals": 1,
            "min": 0,
            "max": 100,
            "thresholds": thresholds((1, "yellow"), (5, "orange"), (20, "red")),
            "color": {"mode": "thresholds"},
            "custom": {"align": "center", "cellOptions": {"type": "color-background", "mode": "basic"}},
        }
    )
    heat["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": "source_region\\target_region"}, "properties": [{"id": "custom.cellOptions", "value": {"type": "auto"}}]}
    ]
    l.add(heat, 24, 8)
    l.row("Region pairs")
    q = lambda expr: expr  # noqa: E731 (readability below)
    l.add(
        table(
            "Quality per region pair",
            [
                ("rtt", q(f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="rtt",{ICMP_F}}})'), "s"),
                ("min", q(f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="min",{ICMP_F}}})'), "s"),
                ("max", q(f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="max",{ICMP_F}}})'), "s"),
                ("p50", f"histogram_quantile(0.5, sum by ({PAIR}, le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", "s"),
                ("p90", f"histogram_quantile(0.9, sum by ({PAIR}, le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", "s"),
                ("resolve", f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="resolve",{ICMP_F}}})', "s"),
                ("loss", f"max by ({PAIR}) (prober_icmp_packet_loss_rate{{{ICMP_F}}})", "percent"),
                ("jitter", f"max by ({PAIR}) (prober_icmp_jitter_stddev_seconds{{{ICMP_F}}})", "s"),
                ("failed", f"sum by ({PAIR}) (prober_icmp_failed{{{ICMP_F}}})", "none"),
            ],
            "source_region",
            description="Last window per pair: mean RTT (and the mean of per-probe min and max), quantiles from the RTT histogram, DNS time, loss, jitter (RTT standard deviation) and failed results.",
        ),
        24,
        9,
    )
    l.add(timeseries("Packet loss", [target(f"max by ({PAIR}) (prober_icmp_packet_loss_rate{{{ICMP_F}}})", "{{source_region}} → {{target_region}}")], "percent"), 12, 8)
    l.add(timeseries("Failed results", [target(f"sum by ({PAIR}) (prober_icmp_failed{{{ICMP_F}}})", "{{source_region}} → {{target_region}}")], "none",
                     description="Failed ICMP results per window (no echo came back, or none could be sent)."), 12, 8)
    l.add(timeseries("Mean RTT", [target(f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="rtt",{ICMP_F}}})', "{{source_region}} → {{target_region}}")], "s"), 12, 8)
    l.add(
        timeseries(
            "RTT p50 / p90 (histogram)",
            [
                target(f"histogram_quantile(0.5, sum by ({PAIR}, le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", "p50 {{source_region}} → {{target_region}}", "A"),
                target(f"histogram_quantile(0.9, sum by ({PAIR}, le) (rate(prober_icmp_duration_seconds_total_bucket{{{ICMP_F}}}[$__rate_interval])))", "p90 {{source_region}} → {{target_region}}", "B"),
            ],
            "s",
        ),
        12,
        8,
    )
    l.add(timeseries("Jitter (RTT standard deviation)", [target(f"max by ({PAIR}) (prober_icmp_jitter_stddev_seconds{{{ICMP_F}}})", "{{source_region}} → {{target_region}}")], "s"), 12, 8)
    l.add(timeseries("DNS resolve", [target(f'avg by ({PAIR}) (prober_icmp_duration_seconds{{phase="resolve",{ICMP_F}}})', "{{source_region}} → {{target_region}}")], "s"), 12, 8)
    variables = [
        query_var("source_region", "Source region", "label_values(prober_icmp_packet_loss_rate, source_region)"),
        query_var("target_region", "Target region", 'label_values(prober_icmp_packet_loss_rate{source_region=~"$source_region"}, target_region)'),
    ]
    return dashboard("probermesh-icmp", "ProberMesh / ICMP", ["probermesh", "icmp"], variables, l, "now-3h",
                     "Region-to-region ICMP: loss, RTT, jitter, failures (the Go ICMP dashboard's panels, a loss heatmap and RTT quantiles).")


def http():
    l = Layout()
    by_url = "source_region, target_region, target_addr"
    l.row("Overview")
    l.add(stat("Agents alive", "count(prober_agent_is_alive == 1) or vector(0)"), 4, 4)
    l.add(stat("URLs probed", f"count(count by (target_addr) (prober_http_status_code{{{HTTP_F}}})) or vector(0)"), 4, 4)
    l.add(stat("URLs failing", f'count(sum by (target_addr) (prober_http_failed{{failed_reason!="success",{HTTP_F}}}) > 0) or vector(0)', steps=((1, "red"),)), 4, 4)
    l.add(stat("Results received /s", 'sum(rate(prober_server_receive_points{prober_type="http"}[$__rate_interval]))', unit="reqps"), 4, 4)
    l.add(stat("Earliest certificate expiry", f"min(prober_http_ssl_earliest_cert_expiry{{{HTTP_F}}}) - time()", unit="dtdurations",
               steps=((0, "red"), (7 * 86400, "yellow"), (21 * 86400, "green"))), 8, 4)
    l.panels[-1]["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"] = "red"
    l.add(
        timeseries(
            "Failures by reason",
            [target(f'sum by (target_addr, failed_reason) (prober_http_failed{{failed_reason!="success",{HTTP_F}}})', "{{target_addr}}: {{failed_reason}}")],
            "none",
            description="Failed results per window, by URL and failed_reason (the first reason seen in the window).",
        ),
        12,
        8,
    )
    pie = {
        "type": "piechart",
        "title": "Failures by URL",
        "datasource": DS,
        "targets": [target(f'topk(10, sum by (target_addr) (prober_http_failed{{failed_reason!="success",{HTTP_F}}}))', "{{target_addr}}", instant=True)],
        "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "pieType": "pie", "legend": {"displayMode": "table", "placement": "right", "showLegend": True, "values": ["value"]}},
    }
    l.add(pie, 12, 8)
    l.row("URLs")
    phases = ["resolve", "connect", "tls", "processing", "transfer"]
    columns = [("total", f"sum by ({by_url}) (prober_http_duration_seconds{{{HTTP_F}}})", "s")]
    columns += [(p, f'max by ({by_url}) (prober_http_duration_seconds{{phase="{p}",{HTTP_F}}})', "s") for p in phases]
    columns += [
        ("status", f"max by ({by_url}) (prober_http_status_code{{{HTTP_F}}})", "none"),
        ("failed", f"sum by ({by_url}) (prober_http_failed{{{HTTP_F}}})", "none"),
    ]
    l.add(table("Quality per URL and source region", columns, "target_addr",
                description="Last window: the five phases (their sum is the total), the status code (the mean of the window's codes, as in Go) and failed results."), 24, 9)
    l.add(
        table(
            "Failure reasons",
            [("failed", f"sum by ({by_url}, failed_reason) (prober_http_failed{{{HTTP_F}}})", "none")],
            "target_addr",
        ),
        12,
        8,
    )
    l.add(
        table(
            "Certificate expiry",
            [("expires in", f"min by (target_addr, version) (prober_http_ssl_earliest_cert_expiry{{{HTTP_F}}}) - time()", "dtdurations")],
            "expires in",
            description="Time left before the earliest NotAfter of each URL's chain, with the TLS version.",
        ),
        12,
        8,
    )
    l.add(timeseries("Phases (stacked, mean over source regions)", [target(f"avg by (target_addr, phase) (prober_http_duration_seconds{{{HTTP_F}}})", "{{target_addr}} {{phase}}")], "s", stack=True), 24, 9)
    for p in phases:
        l.add(timeseries(f"Phase: {p}", [target(f'max by ({by_url}) (prober_http_duration_seconds{{phase="{p}",{HTTP_F}}})', "{{source_region}} → {{target_addr}}")], "s"), 8 if p != "transfer" and p != "processing" else 12, 8)
    l.add(timeseries("Status code", [target(f"max by ({by_url}) (prober_http_status_code{{{HTTP_F}}})", "{{source_region}} → {{target_addr}}")], "none"), 12, 8)
    l.add(timeseries("Total duration", [target(f"sum by ({by_url}) (prober_http_duration_seconds{{{HTTP_F}}})", "{{source_region}} → {{target_addr}}")], "s"), 12, 8)
    variables = [
        query_var("source_region", "Source region", "label_values(prober_http_status_code, source_region)"),
        query_var("target_region", "Project (target region)", 'label_values(prober_http_status_code{source_region=~"$source_region"}, target_region)'),
        query_var("target_addr", "URL", 'label_values({__name__=~"prober_http_duration_seconds|prober_http_failed",source_region=~"$source_region",target_region=~"$target_region"}, target_addr)'),
    ]
    return dashboard("probermesh-http", "ProberMesh / HTTP", ["probermesh", "http"], variables, l, "now-1h",
                     "Region-to-URL HTTP: the five phases, status, failure reasons and certificate expiry (the Go HTTP dashboard's panels).")


def agents():
    l = Layout()
    R = 'region=~"$region"'
    l.row("Agents")
    l.add(stat("Agents alive", f"count(prober_agent_is_alive{{{R}}} == 1) or vector(0)"), 4, 4)
    l.add(stat("Agents down", f"count(max by (region, ip) (prober_agent_is_alive{{{R}}}) == 0) or vector(0)", steps=((1, "red"),),
               description="Agents the server heard from that sent no heartbeat for ratio × window (kept at 0 for an hour, then removed)."), 4, 4)
    l.add(stat("Regions with agents", f"count(count by (region) (prober_agent_is_alive{{{R}}} == 1)) or vector(0)"), 4, 4)
    l.add(stat("Connected agent processes", "sum(prober_server_agent_versions) or vector(0)"), 4, 4)
    l.add(stat("Remote tasks", "prober_server_task_enabled", steps=((1, "orange"),), description="1 when the server runs with -server.task."), 4, 4)
    l.add(stat("Probe own region", "prober_server_probe_self_enabled", description="1 when the server runs with -server.probe.self."), 4, 4)
    l.add(timeseries("Agents alive per region", [target(f"count by (region) (prober_agent_is_alive{{{R}}} == 1)", "{{region}}")], "none"), 12, 8)
    l.add(timeseries("Versions (connected agents)", [target("sum by (version) (prober_server_agent_versions)", "{{version}}")], "none", stack=True), 12, 8)
    l.add(
        table(
            "Agents",
            [("alive", f"max by (region, ip, version) (prober_agent_is_alive{{{R}}})", "none")],
            "region",
            description="Every agent the server knows, by region, address and version: 1 alive, 0 silent.",
        ),
        12,
        9,
    )
    l.add(table("Self-upgrade", [("agents", "max by (state) (prober_server_upgrade_agents)", "none")], "state",
                description="Agents per state of the current rollout (POST /-/upgrade)."), 12, 9)
    l.row("Results")
    l.add(timeseries("Results received /s", [target("sum by (prober_type) (rate(prober_server_receive_points[$__rate_interval]))", "{{prober_type}}")], "reqps"), 12, 8)
    l.add(timeseries("Results dropped /s", [target("sum by (reason) (rate(prober_server_dropped_points_total[$__rate_interval]))", "{{reason}}")], "reqps",
                     description="Results the server did not aggregate: late (their window had settled), future (clock skew) or duplicate."), 12, 8)
    variables = [query_var("region", "Agent region", "label_values(prober_agent_is_alive, region)")]
    return dashboard("probermesh-agents", "ProberMesh / Agents", ["probermesh", "agents"], variables, l, "now-6h",
                     "Agents: liveness, versions, upgrades, results received and dropped by the server.")


DASHBOARDS = {"probermesh-icmp.json": icmp, "probermesh-http.json": http, "probermesh-agents.json": agents}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        text = render(build)
        path = HERE / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 packaging/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
