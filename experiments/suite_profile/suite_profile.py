"""Where the test suite's time goes: CPU seconds and XLA compile seconds per test, per file and per
subprocess.

    PYTHONPATH=experiments/suite_profile SUITE_PROFILE_LOG=/tmp/suite.jsonl \\
        make test PYTEST_ARGS="-p suite_profile"
    python experiments/suite_profile/suite_profile.py /tmp/suite.jsonl

As a pytest plugin (``-p suite_profile``) it appends one JSON line per test: the worker, wall seconds,
CPU seconds of the test process and of the subprocesses it waited for, and the compile seconds, compile
count and cache hits with the most expensive programs by name. Every Python process started with this
folder on ``PYTHONPATH`` (``sitecustomize.py``) appends a line at exit too (argv, the test that started
it, CPU and compile seconds). Run as a script it prints the files by CPU, the programs by compile time
and the subprocesses. Compile seconds are wall seconds inside XLA (parallel codegen can use more CPU).
With ``SUITE_PROFILE_PROGRAMS=1`` the log also gets one line per program lowered (``"kind": "program"``:
its name, the last 400 characters of its argument shapes, its persistent-cache key, hit or miss, and
the compile seconds), e.g. to find one configuration compiled twice in one process.
"""
from __future__ import annotations

import collections
import json
import os
import resource
import sys
import time

import compile_events

try:
    import pytest
except ImportError:  # the summary needs no pytest
    pytest = None


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


if pytest is not None:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        compile_events.install()
        totals, programs = compile_events.snapshot()
        cpu, children, start = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.time()
        yield
        after, after_programs = compile_events.snapshot()
        delta = {k: [v[0] - programs.get(k, [0, 0.0])[0], v[1] - programs.get(k, [0, 0.0])[1]]
                 for k, v in after_programs.items()}
        compile_events.append({
            "kind": "test", "id": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
            "wall_s": round(time.time() - start, 2), "cpu_s": round(_cpu(resource.RUSAGE_SELF) - cpu, 2),
            "children_cpu_s": round(max(0.0, _cpu(resource.RUSAGE_CHILDREN) - children), 2),
            **{k: round(after[k] - totals[k], 2) if k == "compile_s" else after[k] - totals[k] for k in totals},
            "programs": compile_events.top_programs(delta)})


def summarize(path: str, top: int = 25) -> str:
    tests, processes = [], []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] != "program":  # SUITE_PROFILE_PROGRAMS's per-program lines: see programs()
                (tests if rec["kind"] == "test" else processes).append(rec)
    files: dict = collections.defaultdict(lambda: [0.0, 0.0, 0.0, ""])
    for t in tests:
        row = files[t["id"].split("::")[0]]
        row[0] += t["wall_s"]
        row[1] += t["cpu_s"] + t["children_cpu_s"]
        row[2] += t["compile_s"]
        row[3] = t["worker"]
    lines = ["file | worker | wall s | CPU s (with subprocesses) | compile s in the test process",
             "---|---|---|---|---"]
    for name, (wall, cpu, comp, worker) in sorted(files.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{name} | {worker} | {wall:.1f} | {cpu:.1f} | {comp:.1f}")
    programs: dict = collections.defaultdict(lambda: [0, 0.0])
    for rec in tests + [p for p in processes if p["test"]]:  # a worker's own line repeats its tests'
        for name, count, seconds in rec["programs"]:
            programs[name][0] += count
            programs[name][1] += seconds
    lines += ["", "program | compiles | compile s", "---|---|---"]
    lines += [f"{n} | {c} | {s:.1f}" for n, (c, s) in sorted(programs.items(), key=lambda kv: -kv[1][1])[:top]]
    lines += ["", "subprocess (test) | CPU s | compile s | compiles | cache hits", "---|---|---|---|---"]
    for p in sorted((p for p in processes if p["test"]), key=lambda p: -p["cpu_s"])[:top]:
        lines.append(f"{p['argv'][:60]} ({p['test'][:70]}) | {p['cpu_s']:.1f} | {p['compile_s']:.1f} | "
                     f"{p['compiles']} | {p['cache_hits']}")
    cpu = sum(r[1] for r in files.values())
    comp = sum(t["compile_s"] for t in tests) + sum(p["compile_s"] for p in processes if p["test"])
    lines += ["", f"tests: {len(tests)}, CPU {cpu:.0f} s, XLA compile {comp:.0f} s (wall inside XLA)"]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: suite_profile.py LOG.jsonl")
    print(summarize(sys.argv[1]))
