# ruff: noqa: E501  (long table labels and config templates)
"""Render results as markdown and splice them into docs/BENCHMARKS.md between markers, so the
hand-written analysis around them survives a re-run."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
PBEGIN, PEND = "<!-- bench:profile:begin -->", "<!-- bench:profile:end -->"

# key, label, unit, higher_is_better
ROWS = [
    ("conc10_rps", "10 keep-alive conns, 1 KB GET", "req/s", True),
    ("seq_rps", "1 keep-alive conn, sequential", "req/s", True),
    ("seq_p50_ms", "1 keep-alive conn, p50 latency", "ms", False),
    ("seq_p99_ms", "1 keep-alive conn, p99 latency", "ms", False),
    ("newconn_rps", "new connection per request (10 conc.)", "req/s", True),
    ("download_mbps", "100 MB download", "MB/s", True),
    ("download_peak_mib", "100 MB download: proxy peak RSS", "MiB", False),
    ("download_growth_mib", "100 MB download: proxy RSS growth", "MiB", False),
    ("upload_mbps", "100 MB upload", "MB/s", True),
    ("upload_peak_mib", "100 MB upload: proxy peak RSS", "MiB", False),
    ("upload_growth_mib", "100 MB upload: proxy RSS growth", "MiB", False),
    ("rss_idle_mib", "proxy RSS at start", "MiB", False),
    ("passthrough_rps", "passthrough tunnel, 10 keep-alive conns", "req/s", True),
]
RATIO_KEYS = {"conc10_rps", "seq_rps", "seq_p50_ms", "seq_p99_ms", "newconn_rps", "download_mbps",
              "upload_mbps", "passthrough_rps"}  # fmt: skip


def medians(rounds: list[dict[str, dict[str, object]]]) -> dict[str, dict[str, object]]:
    """Per target and key, the median over the rounds that measured it (a failed measurement,
    None, counts only when no round measured it)."""
    numbers: dict[str, dict[str, list[float]]] = {}
    out: dict[str, dict[str, object]] = {}
    for results in rounds:
        for name, r in results.items():
            for key, v in r.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    numbers.setdefault(name, {}).setdefault(key, []).append(float(v))
                elif key == "problems" and isinstance(v, list):
                    out.setdefault(name, {}).setdefault("problems", []).extend(v)  # type: ignore[union-attr]
                else:
                    out.setdefault(name, {}).setdefault(key, v)
    for name, keys in numbers.items():
        for key, vs in keys.items():
            out.setdefault(name, {})[key] = statistics.median(vs)
    return out


ROUND_KEYS = [("conc10_rps", "10 keep-alive conns"), ("seq_rps", "1 conn sequential"),
              ("newconn_rps", "new conn per request"), ("download_mbps", "100 MB download")]  # fmt: skip


def round_ratios(rounds: list[dict[str, dict[str, object]]], labels: dict[str, str]) -> str:
    """Each vaultproxy target's ratio to bare mitmdump measured in the same round."""
    names = [n for n in labels if n.startswith("vp-")]
    head = "| workload | " + " | ".join(labels[n] for n in names) + " |"
    out = [
        f"Ratio to bare mitmdump within each round ({len(rounds)} rounds, interleaved): "
        "median (each round).",
        "",
        head,
        "|---|" + "---|" * len(names),
    ]
    for key, label in ROUND_KEYS:
        cells = []
        for n in names:
            rs = []
            for results in rounds:
                v, ref = results.get(n, {}).get(key), results.get("mitmdump", {}).get(key)
                if isinstance(v, int | float) and isinstance(ref, int | float) and ref:
                    rs.append(float(v) / float(ref))
            cells.append(
                f"{statistics.median(rs):.2f}× ({', '.join(f'{r:.2f}' for r in rs)})" if rs else "—"
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


def machine(**kw: object) -> dict[str, object]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "mitmproxy": metadata.version("mitmproxy"),
        "nginx": _version(["nginx", "-v"]),
        "squid": _version(["squid", "-v"]),
        **kw,
    }


def _fmt(v: object, unit: str) -> str:
    if v is None:
        return "—"
    x = float(v)  # type: ignore[arg-type]
    if unit == "ms":
        return f"{x:.2f}"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _ratio(v: object, ref: object, higher: bool) -> str:
    if v is None or ref is None or not float(ref):  # type: ignore[arg-type]
        return "—"
    r = float(v) / float(ref)  # type: ignore[arg-type]
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def render(
    results: dict[str, dict[str, object]],
    labels: dict[str, str],
    meta: dict[str, object],
    skipped: list[str],
) -> str:
    names = [n for n in labels if n in results]
    ref_m = results.get("mitmdump", {})
    ref_d = results.get("direct", {})
    head = "| workload | unit | " + " | ".join(labels[n] for n in names) + " |"
    out = [head, "|---|---|" + "---|" * len(names)]
    for key, label, unit, higher in ROWS:
        cells = []
        for n in names:
            v = results[n].get(key)
            cell = _fmt(v, unit)
            if key in RATIO_KEYS and v is not None and n not in ("mitmdump", "direct"):
                cell += f" ({_ratio(v, ref_m.get(key), higher)} m, {_ratio(v, ref_d.get(key), higher)} d)"
            elif key in RATIO_KEYS and v is not None and n == "mitmdump":
                cell += f" ({_ratio(v, ref_d.get(key), higher)} d)"
            cells.append(cell)
        out.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    lines = [
        f"Run {meta['date']}: `{meta['command']}` — {meta['nproc']} CPUs ({meta['cpu']}), "
        f"kernel {meta['kernel']}, Python {meta['python']}, mitmproxy {meta['mitmproxy']}, "
        f"{meta['nginx']}, {meta['squid']}.",
        "",
        f"Load average before the run {_load(meta['load_before'])}, after {_load(meta['load_after'])}; "
        f"run took {float(meta['elapsed']):.0f} s; durations (s) {meta['durations']}.",  # type: ignore[arg-type]
        "",
        "Cells: value (ratio to bare mitmdump `m`, ratio to direct `d`). For latency a ratio < 1 is better.",
        "",
        *out,
    ]
    problems = [f"{n}: {p}" for n in names for p in results[n].get("problems", [])]  # type: ignore[attr-defined]
    if skipped or problems:
        lines += ["", "Not measured / failed:", *[f"- {s}" for s in skipped + problems]]
    return "\n".join(lines)


def _load(v: object) -> str:
    return "/".join(f"{x:.2f}" for x in v)  # type: ignore[attr-defined]


def _splice(text: str, begin: str, end: str, body: str) -> str:
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        return pre + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def write_doc(path: Path, results_md: str, profile_md: str | None) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    text = _splice(text, BEGIN, END, results_md)
    if profile_md:
        text = _splice(text, PBEGIN, PEND, profile_md)
    path.write_text(text)
