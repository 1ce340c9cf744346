"""`make bench`: Petrel side by side with a private Postfix, on loopback, same run.

Matrix: Postfix's ``smtp-source`` (a new connection per message) at 1 KB × 1, 10 and
100 sessions and 100 KB × 10; each point is repeated, alternating Petrel and Postfix,
and timed from start until every message is in the Maildir's new/ (durable and
delivered, not merely acknowledged). Probes: idle memory per session after EHLO,
one-client transaction latency, a 50 MB message's RSS growth. Writes
bench/results/<date>.md and prints the same tables.

Environment: QUICK=1 (one run, fewer messages, < 2 minutes), RUNS, MESSAGES,
WORKERS (Petrel's server.workers; "compare" runs 1 and "auto" side by side),
TARGETS (comma list of petrel,checks,postfix; "checks" is Petrel with the inbound
SPF/DKIM/DMARC/ARC checks on, asking a Knot DNS server on loopback that serves an SPF
pass and a DMARC record for the sender, ``petrel`` has them off), MATRIX=0 / PROBES=0
(skip either part),
KEEP=1 (keep the temporary directory and its logs).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from clients import STEPS, big_message, idle_sessions, latencies, percentile
from common import (
    LOOPBACK,
    BenchError,
    count_files,
    empty_maildir,
    machine_facts,
    raise_nofile,
    tree_cpu,
)
from targets import RECIPIENT, PetrelTarget, PostfixTarget, Target

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from dns_server import DnsServer, txt  # noqa: E402  (the tests' Knot DNS server)


@dataclass(frozen=True)
class Point:
    """One cell of the matrix."""

    size: int
    sessions: int
    messages: int

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KB"
        return f"{size} × {self.sessions}"


@dataclass
class Settings:
    """Everything the environment can change."""

    quick: bool
    runs: int
    messages: int
    idle_sessions: int
    latency_messages: int
    big_size: int
    workers: list[str]
    with_postfix: bool
    with_checks: bool
    matrix: bool
    probes: bool

    @classmethod
    def from_env(cls) -> Settings:
        quick = os.environ.get("QUICK", "0") not in ("", "0")
        workers = os.environ.get("WORKERS", "1")
        targets = os.environ.get("TARGETS", "petrel,checks,postfix").split(",")
        return cls(
            quick=quick,
            runs=int(os.environ.get("RUNS", "1" if quick else "5")),
            messages=int(os.environ.get("MESSAGES", "400" if quick else "2000")),
            idle_sessions=int(os.environ.get("IDLE_SESSIONS", "1000" if quick else "10000")),
            latency_messages=int(os.environ.get("LATENCY_MESSAGES", "200" if quick else "1000")),
            big_size=int(os.environ.get("BIG_MB", "50")) << 20,
            workers=["1", "auto"] if workers == "compare" else [workers],
            with_postfix="postfix" in targets,
            with_checks="checks" in targets,
            matrix=os.environ.get("MATRIX", "1") != "0",
            probes=os.environ.get("PROBES", "1") != "0",
        )

    def points(self) -> list[Point]:
        n = self.messages
        return [
            Point(1024, 1, n),
            Point(1024, 10, n),
            Point(1024, 100, n),
            Point(100 * 1024, 10, max(100, n // 2)),
        ]


@dataclass
class Sample:
    """One timed run of one target at one point."""

    delivered_rate: float  # msgs/s until all are in new/
    accepted_rate: float  # msgs/s until smtp-source returned
    ok: bool
    note: str = ""
    cpu_ms: float | None = None  # Petrel's CPU per message (its processes live throughout)


@dataclass
class Results:
    """Samples per (point label, target name), plus probe lines."""

    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    probes: list[tuple[str, str, str]] = field(default_factory=list)  # (probe, target, value)


def run_point(target: Target, point: Point) -> Sample:
    """One smtp-source run; wait (bounded) until every message sits in the Maildir."""
    empty_maildir(target.maildir)
    new = target.maildir / "new"
    argv = [
        "smtp-source",
        "-s", str(point.sessions),
        "-m", str(point.messages),
        "-l", str(point.size),
        "-M", "client.test",
        "-f", "sender@client.test",
        "-t", RECIPIENT,
        f"{LOOPBACK}:{target.port}",
    ]  # fmt: skip
    limit = 30 + point.messages * point.size / 2e6 + point.messages / 50
    # Postfix forks and reaps per message, so only Petrel's CPU can be read this way.
    cpu_before = tree_cpu(target.pids()) if isinstance(target, PetrelTarget) else None
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        accepted_at = None
        delivered = 0
        while True:
            now = time.monotonic()
            if accepted_at is None and proc.poll() is not None:
                accepted_at = now
            delivered = count_files(new)
            if delivered >= point.messages or now - start > limit:
                break
            if accepted_at is not None and proc.returncode != 0:
                break
            time.sleep(0.005)
        end = time.monotonic()
        if accepted_at is None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            accepted_at = time.monotonic()
    finally:
        if proc.poll() is None:  # interrupted: leave no load generator behind
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    ok = delivered >= point.messages and proc.returncode == 0
    note = (
        "" if ok else f"delivered {delivered}/{point.messages}, rc={proc.returncode} {err[-200:]}"
    )
    cpu_ms = None
    if cpu_before is not None and delivered:
        cpu_ms = (tree_cpu(target.pids()) - cpu_before) * 1000 / delivered
    return Sample(
        delivered_rate=delivered / (end - start),
        accepted_rate=point.messages / max(accepted_at - start, 1e-9),
        ok=ok,
        note=note,
        cpu_ms=cpu_ms,
    )


def run_matrix(settings: Settings, targets: list[Target], results: Results) -> None:
    """Every point, ``runs`` rounds, the targets alternating inside each round."""
    for point in settings.points():
        for round_no in range(settings.runs):
            order = targets if round_no % 2 == 0 else list(reversed(targets))
            for target in order:
                sample = run_point(target, point)
                results.samples.setdefault((point.label, target.name), []).append(sample)
                flag = "" if sample.ok else f"  FAILED: {sample.note}"
                cpu = "" if sample.cpu_ms is None else f", {sample.cpu_ms:.2f} ms CPU/msg"
                print(
                    f"  {point.label:>11}  run {round_no + 1}/{settings.runs}  "
                    f"{target.name:<12} {sample.delivered_rate:8.0f} msgs/s delivered"
                    f"  ({sample.accepted_rate:.0f} accepted{cpu}){flag}",
                    flush=True,
                )


def run_probes(settings: Settings, targets: list[Target], results: Results) -> None:
    """Latency, idle memory and the large message, per target."""
    for target in targets:
        count = settings.latency_messages
        steps = latencies(target.port, count)
        empty_maildir(target.maildir)
        totals = [sum(step) for step in steps]
        text = (
            f"p50 {percentile(totals, 0.5) * 1e3:.2f} ms, p99 {percentile(totals, 0.99) * 1e3:.2f}"
            f" ms ({count} msgs)"
        )
        parts = ", ".join(
            f"{name} {statistics.median(step[i] for step in steps) * 1e3:.2f}"
            for i, name in enumerate(STEPS)
        )
        results.probes.append(("latency, one client", target.name, text))
        results.probes.append(("latency steps, median ms", target.name, parts))
        print(
            f"  latency      {target.name:<12} {text}\n               {'':<12} {parts}", flush=True
        )
    for target in targets:
        if isinstance(target, PetrelTarget):
            target.restart()  # a fresh heap: freed matrix memory would hide the cost
        # Stock Postfix runs at most 100 smtpd processes; more would wait in the backlog.
        count = settings.idle_sessions if isinstance(target, PetrelTarget) else 100
        idle = idle_sessions(target.port, count, target.pids)
        per = idle.rss_kib / idle.held if idle.held else float("nan")
        pss = idle.pss_kib / idle.held if idle.held else float("nan")
        text = (
            f"{per:.1f} KiB RSS ({pss:.1f} KiB PSS) per session; held {idle.held}/{idle.asked},"
            f" NOOP answered {idle.noop_ok}"
        )
        results.probes.append(("idle session after EHLO", target.name, text))
        print(f"  idle         {target.name:<12} {text}", flush=True)
    # Postfix forks a process per stage and reaps idle ones: its tree's RSS moves for
    # reasons unrelated to the message, so this probe is Petrel's alone.
    for target in (t for t in targets if isinstance(t, PetrelTarget)):
        new = target.maildir / "new"
        empty_maildir(target.maildir)
        target.restart()
        big = big_message(
            target.port, settings.big_size, target.pids, lambda n=new: count_files(n) > 0
        )
        empty_maildir(target.maildir)
        text = (
            f"{big.rss_growth_kib / 1024:.1f} MiB RSS growth, "
            f"{'accepted' if big.accepted else 'NOT accepted'}, {big.seconds:.1f} s"
        )
        results.probes.append((f"{settings.big_size >> 20} MB message", target.name, text))
        print(f"  big message  {target.name:<12} {text}", flush=True)


def _fmt_rates(samples: list[Sample]) -> tuple[float, str]:
    rates = [s.delivered_rate for s in samples]
    median = statistics.median(rates)
    spread = f"{min(rates):.0f}–{max(rates):.0f}"
    failed = sum(not s.ok for s in samples)
    return median, f"{median:.0f} ({spread}){' ⚠ ' + str(failed) + ' failed' if failed else ''}"


def report(settings: Settings, names: list[str], results: Results, facts: dict[str, str]) -> str:
    """The markdown report: facts, the matrix with ratios, the probes."""
    lines = [
        f"# Petrel bench — {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "",
        "Mode: "
        + ("QUICK (1 run, few messages: indicative only)" if settings.quick else "full")
        + f"; {settings.runs} run(s) per point, {settings.messages} messages per 1 KB point.",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in facts.items()),
        "",
        "msgs/s from start until all messages are in Maildir new/ (fsync'd by both servers):"
        " median (min–max).",
        "",
    ]
    labels = [p.label for p in settings.points()]
    header = "| target | " + " | ".join(labels) + " |"
    lines += [header, "|---" * (len(labels) + 1) + "|"]
    medians: dict[tuple[str, str], float] = {}
    for name in names:
        cells = []
        for label in labels:
            samples = results.samples.get((label, name))
            if not samples:
                cells.append("–")
                continue
            medians[label, name], text = _fmt_rates(samples)
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "postfix" in names:
        for name in names:
            if name == "postfix":
                continue
            cells = []
            for label in labels:
                a, b = medians.get((label, name)), medians.get((label, "postfix"))
                cells.append(f"**{a / b:.2f}×**" if a and b else "–")
            lines.append(f"| {name} / postfix | " + " | ".join(cells) + " |")
    cpu_rows = []
    for name in names:
        cells = []
        for label in labels:
            cpu = [s.cpu_ms for s in results.samples.get((label, name), []) if s.cpu_ms]
            cells.append(f"{statistics.median(cpu):.2f}" if cpu else "–")
        if any(c != "–" for c in cells):
            cpu_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    if cpu_rows:
        lines += ["", "Server CPU ms per message (user + system, all threads): median.", ""]
        lines += [header, "|---" * (len(labels) + 1) + "|", *cpu_rows]
    if results.probes:
        lines += ["", "| probe | target | result |", "|---|---|---|"]
        lines += [f"| {p} | {t} | {v} |" for p, t, v in results.probes]
    lines += [
        "",
        "Goals (issue 6): ≥ 2× Postfix at 1 KB × 10, ≥ 1.5× at 100 KB × 10; ≤ 10 KiB per idle"
        " session with 10 000 held; p50 ≤ 1.0 ms, p99 ≤ 3 ms; 50 MB message ≤ 16 MiB RSS growth.",
        "",
    ]
    return "\n".join(lines)


def start_dns(root: Path) -> DnsServer:
    """The tests' Knot DNS server, serving what the checks look up for smtp-source's
    mail (MAIL FROM and HELO client.test): SPF pass for 127.0.0.1, DMARC p=none."""
    dns = DnsServer(root)
    dns.zone(
        "client.test",
        [f"@ TXT {txt('v=spf1 ip4:127.0.0.1 -all')}", f"_dmarc TXT {txt('v=DMARC1; p=none')}"],
    )
    return dns.start()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Set up, run, report, and always tear everything down."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    settings = Settings.from_env()
    if shutil.which("smtp-source") is None:
        print("smtp-source not found: `make bench` installs postfix", file=sys.stderr)
        return 2
    nofile = raise_nofile()
    if nofile < settings.idle_sessions + 200:
        settings.idle_sessions = max(100, nofile - 500)
        print(f"fd limit {nofile}: holding {settings.idle_sessions} idle sessions", flush=True)
    facts = machine_facts()
    root = Path(tempfile.mkdtemp(prefix="petrel-bench-"))
    os.chmod(root, 0o755)  # the Postfix instance's users must traverse it
    targets: list[Target] = []
    dns: DnsServer | None = None
    results = Results()
    started = time.monotonic()
    try:
        for workers in settings.workers:
            name = "petrel" if len(settings.workers) == 1 else f"petrel w={workers}"
            console = os.environ.get("CONSOLE", "0") not in ("", "0")
            targets.append(
                PetrelTarget(root / f"petrel-{workers}", workers, name, console=console)
            )
        if settings.with_checks:
            dns = start_dns(root / "dns")
            targets.append(PetrelTarget(root / "petrel-checks", "1", "petrel checks", dns.address))
        if settings.with_postfix:
            targets.append(PostfixTarget(root / "postfix"))
        for target in targets:
            target.start()
            print(f"{target.name} listening on {LOOPBACK}:{target.port}", flush=True)
        if settings.matrix:
            print("matrix:", flush=True)
            run_matrix(settings, targets, results)
        if settings.probes:
            print("probes:", flush=True)
            run_probes(settings, targets, results)
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for target in reversed(targets):
            try:
                target.stop()
            except Exception as exc:  # teardown must go on to the next target
                print(f"stopping {target.name}: {exc}", file=sys.stderr)
        if dns is not None:
            dns.stop()
        if os.environ.get("KEEP") == "1":
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    facts["bench duration"] = f"{time.monotonic() - started:.0f} s"
    text = report(settings, [t.name for t in targets], results, facts)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
    out = out_dir / f"{stamp}{'-quick' if settings.quick else ''}.md"
    out.write_text(text)
    print()
    print(text)
    print(f"report: {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
