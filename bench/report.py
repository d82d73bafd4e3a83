"""Results as Markdown: the targets, one table per measurement, and the profiles.

``render`` turns the results of one run into the section that
``write_section`` puts between the markers of ``docs/benchmarks.md``,
replacing the previous run's section.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

START_MARKER = "<!-- bench:results:start -->"
END_MARKER = "<!-- bench:results:end -->"

THROUGHPUT_VS_CEILING = 0.9
THROUGHPUT_VS_SOCKETIO = 3.0
P99_VS_CEILING = 1.2
P99_LIMIT_MS_AT_100 = 10.0
KIB_PER_CONNECTION = 20.0
CHAT_P99_LIMIT_MS = 50.0


def _number(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _cpu(row: dict[str, Any]) -> str:
    generators = " + ".join(f"{value:.0f}" for value in row["generator_cpu_percents"])
    return f"{row['server_cpu_percent']:.0f} / {generators}"


def _fanout_index(rows: list[dict[str, Any]]) -> dict[tuple[str, bool, int, int], dict[str, Any]]:
    return {(r["server"], r["deflate"], r["subscribers"], r["size"]): r for r in rows}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare kilo_web with its targets; each entry has the target, the figure and a verdict."""
    checks: list[dict[str, Any]] = []
    index = _fanout_index(results.get("fanout", []))
    for (server, deflate, subscribers, size), row in sorted(index.items()):
        if server != "kilo":
            continue
        case = f"{subscribers} subscribers, {size} B" + (", deflate" if deflate else "")
        kilo_rate = row["throughput"]["deliveries_per_second"]
        kilo_cost = row["throughput"]["server_cpu_us_per_delivery"]
        ceiling = index.get(("ws", deflate, subscribers, size))
        if ceiling is not None:
            ratio = kilo_rate / ceiling["throughput"]["deliveries_per_second"]
            checks.append({
                "target": f"fan-out throughput >= {THROUGHPUT_VS_CEILING} x bare websockets ({case})",
                "measured": f"{ratio:.2f} x",
                "met": ratio >= THROUGHPUT_VS_CEILING,
            })
            cost_ratio = ceiling["throughput"]["server_cpu_us_per_delivery"] / kilo_cost
            checks.append({
                "target": f"same, by server CPU per delivery ({case})",
                "measured": f"{cost_ratio:.2f} x ({kilo_cost:.2f} vs "
                            f"{ceiling['throughput']['server_cpu_us_per_delivery']:.2f} µs)",
                "met": cost_ratio >= THROUGHPUT_VS_CEILING,
            })
            p99_ratio = row["latency"]["p99_ms"] / ceiling["latency"]["p99_ms"]
            checks.append({
                "target": f"p99 publish-to-receive <= {P99_VS_CEILING} x bare websockets ({case})",
                "measured": f"{p99_ratio:.2f} x ({row['latency']['p99_ms']:.2f} vs "
                            f"{ceiling['latency']['p99_ms']:.2f} ms)",
                "met": p99_ratio <= P99_VS_CEILING,
            })
        socketio = index.get(("sio", deflate, subscribers, size))
        if socketio is not None:
            ratio = kilo_rate / socketio["throughput"]["deliveries_per_second"]
            checks.append({
                "target": f"fan-out throughput >= {THROUGHPUT_VS_SOCKETIO:g} x python-socketio ({case})",
                "measured": f"{ratio:.2f} x",
                "met": ratio >= THROUGHPUT_VS_SOCKETIO,
            })
            cost_ratio = socketio["throughput"]["server_cpu_us_per_delivery"] / kilo_cost
            checks.append({
                "target": f"same, by server CPU per delivery ({case})",
                "measured": f"{cost_ratio:.2f} x ({kilo_cost:.2f} vs "
                            f"{socketio['throughput']['server_cpu_us_per_delivery']:.2f} µs)",
                "met": cost_ratio >= THROUGHPUT_VS_SOCKETIO,
            })
        if subscribers == 100 and not deflate:
            p99 = row["latency"]["p99_ms"]
            checks.append({
                "target": f"p99 publish-to-receive < {P99_LIMIT_MS_AT_100:g} ms at 100 subscribers ({size} B)",
                "measured": f"{p99:.2f} ms",
                "met": p99 < P99_LIMIT_MS_AT_100,
            })
    for row in results.get("connections", []):
        if row["server"] != "kilo":
            continue
        setting = "deflate on" if row["compression"] else "compression=None (the default)"
        checks.append({
            "target": f"<= {KIB_PER_CONNECTION:g} KiB RSS per idle subscribed connection "
                      f"({row['connections']:,} connections, {setting})",
            "measured": f"{row['kib_per_connection']:.1f} KiB",
            "met": row["kib_per_connection"] <= KIB_PER_CONNECTION,
        })
    for row in results.get("chat", []):
        if row.get("skipped") or row["database"] != "sqlite" or not row.get("push", True):
            continue
        p99 = row["receive"]["p99_ms"]
        checks.append({
            "target": f"p99 post-to-receive < {CHAT_P99_LIMIT_MS:g} ms on SQLite, push dispatch on",
            "measured": f"{p99:.1f} ms",
            "met": p99 < CHAT_P99_LIMIT_MS,
        })
    return checks


def _fanout_table(rows: list[dict[str, Any]]) -> list[str]:
    index = _fanout_index(rows)
    lines = [
        "| server | client deflate | subscribers | payload | deliveries/s (range) | vs bare "
        "| server µs per delivery | CPU %: server / generators / others / machine | limited by "
        "| p50 ms | p99 ms | max ms | samples | latency load (events/s) |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        throughput, latency = row["throughput"], row["latency"]
        ceiling = index.get(("ws", row["deflate"], row["subscribers"], row["size"]))
        ratio = (throughput["deliveries_per_second"]
                 / ceiling["throughput"]["deliveries_per_second"]) if ceiling else math.nan
        missing = throughput["expected"] - throughput["delivered"]
        rate = _number(throughput["deliveries_per_second"])
        low, high = throughput.get("range", [math.nan, math.nan])
        if throughput.get("repeats", 1) > 1:
            rate += f" ({_number(low)} to {_number(high)})"
        if missing:
            rate += f", {missing:,} missing"
        lines.append(
            f"| {row['server']} | {'yes' if row['deflate'] else 'no'} | {row['subscribers']:,} "
            f"| {row['size']:,} B | {rate} | {_number(ratio, 2)} "
            f"| {throughput['server_cpu_us_per_delivery']:.2f} "
            f"| {_cpu(throughput)} / {throughput['other_cpu_percent']:.0f} "
            f"/ {throughput['machine_cpu_percent']:.0f} "
            f"| {throughput['bound_by']} | {_number(latency['p50_ms'], 2)} "
            f"| {_number(latency['p99_ms'], 2)} | {_number(latency['max_ms'], 2)} "
            f"| {latency['samples']} | {_number(latency['events_per_second'], 0)} |"
        )
    return lines


def _backplane_lines(result: dict[str, Any]) -> list[str]:
    if not result.get("measured"):
        note = result["note"]
        return [note[0].upper() + note[1:] + "."]
    rows = result["rows"]
    alone = {row["subscribers"]: row for row in rows if row["nodes"] == 1 and "Redis" not in row["setup"]}
    lines = [
        f"Redis at `{result['redis_url']}`. Latency per node: node A publishes, "
        "node B gets every event through Redis.",
        "",
        "| set-up | subscribers | payload | deliveries/s (range) | vs one node "
        "| nodes' µs per delivery | CPU %: node A / node B / Redis / generators / others "
        "/ machine | limited by | p50 ms (A / B) | p99 ms (A / B) | samples per node "
        "| latency load (events/s) |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        throughput, latency = row["throughput"], row["latency"]
        base = alone.get(row["subscribers"])
        ratio = (throughput["deliveries_per_second"]
                 / base["throughput"]["deliveries_per_second"]) if base else math.nan
        rate = _number(throughput["deliveries_per_second"])
        low, high = throughput.get("range", [math.nan, math.nan])
        if throughput.get("repeats", 1) > 1:
            rate += f" ({_number(low)} to {_number(high)})"
        missing = throughput["expected"] - throughput["delivered"]
        if missing:
            rate += f", {missing:,} missing"
        nodes = throughput["node_cpu_percents"]
        cpu = " / ".join([
            f"{nodes[0]:.0f}",
            f"{nodes[1]:.0f}" if len(nodes) > 1 else "-",
            f"{throughput['redis_cpu_percent']:.0f}" if "redis_cpu_percent" in throughput else "-",
            f"{throughput['generator_cpu_percent']:.0f}",
            f"{throughput['other_cpu_percent']:.0f}",
            f"{throughput['machine_cpu_percent']:.0f}",
        ])
        per_node = latency["nodes"]
        lines.append(
            f"| {row['setup']} | {row['subscribers']:,} | {row['size']:,} B | {rate} "
            f"| {_number(ratio, 2)} | {throughput['server_cpu_us_per_delivery']:.2f} | {cpu} "
            f"| {throughput['bound_by']} "
            f"| {' / '.join(_number(node['p50_ms'], 2) for node in per_node)} "
            f"| {' / '.join(_number(node['p99_ms'], 2) for node in per_node)} "
            f"| {per_node[0]['samples']} | {_number(latency['events_per_second'], 0)} |"
        )
    return lines


def _connections_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| server | server compression | connections | deflate agreed | RSS before MiB "
        "| RSS after MiB | KiB per connection | seconds to connect |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['server']} | {'deflate' if row['compression'] else 'None (default)'} "
            f"| {row['connections']:,} | {row['deflate_negotiated']:,} "
            f"| {row['baseline_rss_mib']:.1f} | {row['rss_mib']:.1f} "
            f"| {row['kib_per_connection']:.1f} | {row['connect_seconds']:.1f} |"
        )
    return lines


def _churn_lines(churn: dict[str, Any]) -> list[str]:
    lines = [
        "| measurement | operations or frames/s | CPU % |",
        "|---|---:|---|",
        f"| `SubscriptionCounts` acquire + release, in process | "
        f"{_number(churn['refcount']['operations_per_second'])} | one core |",
    ]
    for row in churn["sdk"]:
        if row["mode"] == "held":
            lines.append(
                f"| `EventServiceClient` subscribe/unsubscribe of a held context (no frame) "
                f"| {_number(row['client_operations_per_second'])} "
                f"| client {row['client_cpu_percent']:.0f}, server {row['server_cpu_percent']:.0f}, "
                f"others {row['other_cpu_percent']:.0f} |"
            )
        else:
            lines.append(
                f"| `EventServiceClient` 0 -> 1 -> 0 (a frame per call), acknowledged by the server "
                f"| {_number(row['acknowledged_operations_per_second'])} "
                f"| client {row['client_cpu_percent']:.0f}, server {row['server_cpu_percent']:.0f}, "
                f"others {row['other_cpu_percent']:.0f} |"
            )
    for row in churn["server"]:
        generators = " + ".join(f"{value:.0f}" for value in row["generator_cpu_percents"])
        lines.append(
            f"| {row['server']} server: subscribe/unsubscribe frames acknowledged "
            f"({row['connections']} connections, {row['window']} in flight each) "
            f"| {_number(row['frames_per_second'])} "
            f"| server {row['server_cpu_percent']:.0f}, generators {generators}, "
            f"others {row['other_cpu_percent']:.0f} |"
        )
    return lines


def _chat_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| database | push dispatch | messages | pushes sent | post-to-receive p50 ms "
        "| p99 ms | max ms | HTTP response p50 ms | p99 ms | server CPU ms per message "
        "| server loop stall p99 / max ms | CPU %: server / client / others |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row.get("skipped"):
            lines.append(f"| {row['database']} | skipped: {row['skipped']} | | | | | | | | | | |")
            continue
        receive, http = row["receive"], row["http"]
        lines.append(
            f"| {row['database']} | {'on' if row.get('push', True) else 'off'} "
            f"| {row['messages']:,} | {row['push_requests']:,} "
            f"| {receive['p50_ms']:.1f} | {receive['p99_ms']:.1f} | {receive['max_ms']:.1f} "
            f"| {http['p50_ms']:.1f} | {http['p99_ms']:.1f} "
            f"| {row['server_cpu_ms_per_message']:.1f} "
            f"| {row['loop_stall']['p99_ms']:.1f} / {row['loop_stall']['max_ms']:.1f} "
            f"| {row['server_cpu_percent']:.0f} / {row['client_cpu_percent']:.0f} "
            f"/ {row['other_cpu_percent']:.0f} |"
        )
    return lines


def _profile_lines(title: str, profile: dict[str, Any], top: int = 10) -> list[str]:
    lines = [
        f"**{title}** ({profile['busy_samples']:,} busy samples, "
        f"{profile['idle_samples']:,} idle):",
        "",
        "| inclusive % | function | | self % | function |",
        "|---:|---|---|---:|---|",
    ]
    inclusive = profile["inclusive_all"][:top]
    own = profile["self"][:top]
    for index in range(max(len(inclusive), len(own))):
        left = inclusive[index] if index < len(inclusive) else None
        right = own[index] if index < len(own) else None
        lines.append(
            f"| {_number(left['percent'], 1) if left else ''} "
            f"| {('`' + left['function'] + '`') if left else ''} | "
            f"| {_number(right['percent'], 1) if right else ''} "
            f"| {('`' + right['function'] + '`') if right else ''} |"
        )
    return lines


def _header_lines(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    return [
        f"## Results: {results['mode']} run of {machine['date']}",
        "",
        f"Command: `{results['command']}` ({results['seconds']:.0f} s).",
        "",
        *_rerun_lines(results.get("reruns", [])),
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}; websockets "
        f"{machine['websockets']}, python-socketio {machine['python-socketio']}, "
        f"python-engineio {machine['python-engineio']}, uvicorn {machine['uvicorn']}. "
        f"Checkout {machine['commit']}. Load average at the start: {machine['load_average']}.",
        "",
    ]


def _rerun_lines(reruns: list[dict[str, Any]]) -> list[str]:
    if not reruns:
        return []
    lines = ["Sections run again afterwards; each section shows the figures of its latest run:", ""]
    for rerun in reruns:
        lines.append(f"- {', '.join(rerun['sections'])}: `{rerun['command']}` on {rerun['date']}, "
                     f"checkout {rerun['commit']}")
    return [*lines, ""]


def _profile_section(results: dict[str, Any]) -> list[str]:
    profiles = results.get("profiles", [])
    chat_profiles = [row for row in results.get("chat", []) if row.get("profile")]
    churn_profiles = [row for row in results.get("churn", {}).get("server", [])
                      if row.get("profile")]
    if not profiles and not chat_profiles and not churn_profiles:
        return []
    lines = ["### Profiles", ""]
    for profile in profiles:
        title = (f"{profile['server']} server, {profile['subscribers']:,} subscribers, "
                 f"{profile['size']} B, {profile['events']:,} events in "
                 f"{profile['seconds']:g} s")
        lines += [*_profile_lines(title, profile), ""]
    for row in chat_profiles:
        title = f"chat server on {row['database']}, posting messages"
        lines += [*_profile_lines(title, row["profile"]), ""]
    for row in churn_profiles:
        title = f"{row['server']} server, subscribe and unsubscribe churn"
        lines += [*_profile_lines(title, row["profile"]), ""]
    return lines


def render(results: dict[str, Any]) -> str:
    """Return the Markdown section for one run."""
    lines = [START_MARKER, "", *_header_lines(results)]

    checks = evaluate_targets(results)
    if checks:
        lines += ["### Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {c['target']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |"
                  for c in checks]
        lines.append("")

    if results.get("fanout"):
        lines += ["### Fan-out", "", *_fanout_table(results["fanout"]), ""]
    if results.get("connections"):
        lines += ["### Idle connections", "", *_connections_table(results["connections"]), ""]
    if results.get("churn"):
        lines += ["### Churn", "", *_churn_lines(results["churn"]), ""]
    if results.get("chat"):
        lines += ["### Chat path", "", *_chat_table(results["chat"]), ""]
    if results.get("backplane"):
        lines += ["### Backplane", "", *_backplane_lines(results["backplane"]), ""]

    lines += _profile_section(results)
    for section, error in results.get("errors", {}).items():
        lines += [f"Section {section} failed: `{error}`.", ""]
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the results section of ``path`` (between the markers) or append one."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start >= 0 and end > start:
        rest = text[end + len(END_MARKER):].strip("\n")
        text = text[:start] + section + ("\n" + rest + "\n" if rest else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    path.write_text(text)
