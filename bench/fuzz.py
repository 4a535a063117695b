"""Fuzz every parser of client bytes with many more inputs than the test suite (issue 15).

Runs ``tests/test_fuzz.py`` under the hypothesis profile ``bench`` (random, not derandomized;
``--examples`` inputs per function parser, a quarter of that per end-to-end door, at least 40)
and reports, per parser: inputs tried, crashes (failing tests: must be 0) and the slowest
input's time. Writes ``bench/results/fuzz.json`` and prints a Markdown table.

    nice -n 19 .venv/bin/python bench/fuzz.py --examples 2000
    nice -n 19 .venv/bin/python bench/fuzz.py --atheris 60   # coverage-guided (pip install atheris)

The times are not speed claims (the machine may be shared; run it at any priority): they show
that no input makes a parser slow (no quadratic blow-up, no hang up to the test timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# the function-level properties of tests/test_fuzz.py that atheris drives (coverage-guided)
ATHERIS_TARGETS = ("test_audio_decode_refuses_corrupt_files_cleanly",
                   "test_asr_config_message_is_parsed_or_refused",
                   "test_agent_config_message_is_parsed_or_refused",
                   "test_translate_control_message_is_parsed_or_refused",
                   "test_realtime_session_update_and_items_are_applied_or_refused",
                   "test_wyoming_event_reader_reads_or_refuses")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000,
                        help="inputs per function-level parser (end-to-end doors: a quarter)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    parser.add_argument("--atheris", type=float, metavar="SECONDS", default=0.0,
                        help="instead: drive each function-level property with atheris "
                             "(coverage-guided, pip install atheris) for SECONDS each")
    parser.add_argument("--atheris-target", help=argparse.SUPPRESS)  # one target, in a child
    args = parser.parse_args()
    if args.atheris_target:
        return _atheris_child(args.atheris_target, args.atheris, args.output)
    if args.atheris:
        return _atheris_all(args.atheris, args.output.with_name("fuzz_atheris.json"))
    with tempfile.TemporaryDirectory() as tmp:
        stats_path, junit = Path(tmp) / "stats.json", Path(tmp) / "junit.xml"
        env = {**os.environ, "VOXGATE_FUZZ_PROFILE": "bench",
               "VOXGATE_FUZZ_EXAMPLES": str(args.examples), "VOXGATE_FUZZ_STATS": str(stats_path)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q",
                               "-p", "no:cacheprovider", f"--junitxml={junit}",
                               "-o", "timeout=3600"], cwd=ROOT, env=env)
        wall = time.monotonic() - started
        stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
        failures = _failures(junit)
    rows = [{"parser": name, "inputs": entry["inputs"], "crashes": entry["crashes"],
             "slowest_s": round(entry["slowest_s"], 4), "slowest_input": entry["slowest_input"],
             "crash_input": entry["crash_input"]} for name, entry in sorted(stats.items())]
    report = {"examples": args.examples, "wall_s": round(wall, 1), "pytest_exit": done.returncode,
              "hypothesis_profile": "bench", "parsers": rows, "failed_tests": failures}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"\n{len(rows)} parsers, {sum(r['inputs'] for r in rows)} inputs in {wall:.0f} s, "
          f"pytest exit {done.returncode}\n")
    print("| parser | inputs tried | crashes | slowest input |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['parser']} | {r['inputs']} | {r['crashes']} | {r['slowest_s']:.3f} s |")
    return done.returncode


def _failures(junit: Path) -> list[str]:
    """The failing tests of the run, each with the start of its message."""
    if not junit.is_file():
        return ["pytest wrote no report"]
    return [f"{case.get('name')}: {(failure.get('message') or '')[:300]}"
            for case in ET.parse(junit).iter("testcase")
            for failure in list(case.iter("failure")) + list(case.iter("error"))]


def _atheris_all(seconds: float, output: Path) -> int:
    """Each target in its own process (atheris fuzzes once per process); one table."""
    rows, worst = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for target in ATHERIS_TARGETS:
            stats = Path(tmp) / f"{target}.json"
            done = subprocess.run([sys.executable, __file__, "--atheris", str(seconds),
                                   "--atheris-target", target, "--output", str(stats)],
                                  cwd=ROOT, capture_output=True, text=True)
            worst = max(worst, done.returncode)
            found = json.loads(stats.read_text()) if stats.is_file() else {}
            executed = [int(line.split(":")[-1]) for line in done.stderr.splitlines()
                        if line.startswith("stat::number_of_executed_units")]
            for name, entry in found.items():
                rows.append({"parser": name, "engine": "atheris", "seconds": seconds,
                             "inputs": executed[0] if executed else entry["inputs"],
                             "crashes": entry["crashes"] + (1 if done.returncode else 0),
                             "slowest_s": round(entry["slowest_s"], 4),
                             "crash_input": entry["crash_input"], "exit": done.returncode,
                             "log_tail": done.stderr[-600:] if done.returncode else ""})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(rows, indent=1))
    print("| parser (atheris) | inputs tried | crashes | slowest input |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['parser']} | {r['inputs']} | {r['crashes']} | {r['slowest_s']:.3f} s |")
    return worst


def _atheris_child(target: str, seconds: float, output: Path) -> int:
    """atheris feeds bytes to hypothesis's ``fuzz_one_input`` of one property; voxgate's
    modules are instrumented for coverage."""
    import atheris

    sys.path.insert(0, str(ROOT / "tests"))
    os.environ["VOXGATE_FUZZ_PROFILE"] = "ci"
    with atheris.instrument_imports(include=["voxgate"]):
        import voxgate.audio  # noqa: F401
        import voxgate.server.realtime_events  # noqa: F401
        import voxgate.server.wire  # noqa: F401
        import voxgate.server.ws_agent  # noqa: F401
        import voxgate.server.ws_translate  # noqa: F401
        import voxgate.server.wyoming  # noqa: F401
    import test_fuzz

    fuzz_one = getattr(test_fuzz, target).hypothesis.fuzz_one_input
    written = [time.monotonic()]

    def one(data: bytes) -> None:
        try:
            fuzz_one(data)
        finally:  # libFuzzer ends the process with exit(): keep the stats on disk as we go
            if time.monotonic() - written[0] > 0.5:
                output.write_text(json.dumps(test_fuzz.STATS))
                written[0] = time.monotonic()

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-print_final_stats=1"], one)
    atheris.Fuzz()  # exits the process; inputs tried come from libFuzzer's final stats
    return 0


if __name__ == "__main__":
    sys.exit(main())
