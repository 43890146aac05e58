"""Every benchmark, one after another: `python -m bench [--smoke] [--only NAME ...] [--data DIR]`.

Each prints its own side-by-side table and appends a JSON line to bench/results.jsonl. --smoke runs
each in seconds (CI: nothing is asserted on time; a benchmark that breaks fails the run). Those that
need a dataset (data_cache, model_runs) run only with --data; gpu_sandbox_check only where a GPU is.
"""

from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import time

from bench.common import ROOT

# name -> (full arguments, smoke arguments); DATA is replaced by --data
SUITE = {
    "server_scale": ([], ["--smoke"]),
    "run_overhead": ([], ["--smoke"]),
    "step_ratio": (["--profile"], ["--smoke"]),
    "sandbox_overhead": ([], ["--repeats", "1", "--steps", "2"]),
    "suggest_vs_random": ([], ["--seeds", "2", "--budget", "12", "--gp-seeds", "0"]),
    "data_cache": (["--data", "DATA"], ["--data", "DATA", "--sizes", "32", "--repeats", "1"]),
    "model_runs": (["--data", "DATA", "tiny=tiny", 'none=tiny:{"EXPERT_VARIANT":"none"}'],
                   ["--data", "DATA", "--folds", "1", 'smoke=tiny:{"MAX_STEPS":2,"EVAL_BATCH_SIZE":64}']),
    "gpu_sandbox_check": ([], []),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", nargs="+", choices=list(SUITE))
    ap.add_argument("--data", help="a prepared dataset (python -m model.prepare --data DIR) for the data benchmarks")
    a = ap.parse_args(argv)
    failed, t_all = [], time.perf_counter()
    for name in a.only or SUITE:
        args = list(SUITE[name][1 if a.smoke else 0])
        if "DATA" in args and not a.data:
            print(f"\n== {name}: skipped (needs --data DIR)", flush=True)
            continue
        if name == "gpu_sandbox_check" and not glob.glob("/dev/nvidia[0-9]*"):
            print(f"\n== {name}: skipped (no NVIDIA GPU here)", flush=True)
            continue
        args = [a.data if x == "DATA" else x for x in args]
        print(f"\n== {name} {' '.join(args)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT).returncode
        print(f"== {name}: exit {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"\nbench: {'all ran' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"({time.perf_counter() - t_all:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
