"""Sandbox overhead, measured side by side in one run.

    python -m bench.sandbox_overhead [--repeats 3] [--steps 8] [--no-torch]

1. start overhead: `python -c pass` as a plain subprocess vs through each backend (launch -> wait);
2. a small torch training child (DataLoader num_workers=2, a few steps, torch.save into the run dir),
   plain subprocess vs each backend; the ratio is median(backend) / median(plain).
Runs are interleaved (plain, bwrap, landlock, none, plain, ...) so that load drift hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import record  # noqa: E402

from sandbox import Limits, SandboxPolicy, available_backends, launch  # noqa: E402
from sandbox.torch_smoke import TRAIN_SCRIPT  # noqa: E402

warnings.simplefilter("ignore")


def plain(argv, cwd, run_dir):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AR_RUN_DIR": str(run_dir), "HOME": str(run_dir)}
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    dt = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(p.stderr.decode()[-2000:])
    return dt


def boxed(argv, cwd, run_dir, backend):
    pol = SandboxPolicy(argv=argv, cwd=cwd, run_dir=run_dir, read_only=[cwd], env={"AR_RUN_DIR": str(run_dir)},
                        gpu=False, limits=Limits(wall_seconds=600))
    t0 = time.perf_counter()
    res = launch(pol, backend=backend).wait()
    dt = time.perf_counter() - t0
    if not res.ok:
        raise RuntimeError(f"{backend}: {res.status} {res.returncode} {res.reason} "
                           + (run_dir / "stderr.log").read_text()[-2000:])
    return dt


def measure(label, argv, cwd, base, backends, repeats):
    times = {"plain": []} | {b: [] for b in backends}
    for r in range(repeats):
        for name in times:
            run_dir = Path(tempfile.mkdtemp(dir=base, prefix=f"{name}-"))
            if name == "plain":
                times[name].append(plain(argv, cwd, run_dir))
            else:
                times[name].append(boxed(argv, cwd, run_dir, name))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{label} (median of {repeats}; seconds)")
    for k, v in times.items():
        extra = "" if k == "plain" else f"  ratio {med[k] / med['plain']:.2f}x  (+{(med[k] - med['plain']) * 1000:.0f} ms)"
        print(f"  {k:9s} {med[k]:8.3f}   runs {', '.join(f'{x:.3f}' for x in v)}{extra}")
    return {"label": label, "median_s": med, "runs_s": times}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    av = available_backends()
    backends = [b for b in ("bwrap", "landlock", "none") if av[b]["available"]]
    print("backends:", ", ".join(backends), "| cpus:", os.cpu_count(), "| load:", os.getloadavg())
    py = os.path.normpath(sys.executable)
    out = []
    with tempfile.TemporaryDirectory(prefix="sbx-bench-") as base:
        code = Path(base) / "code"
        code.mkdir()
        (code / "train.py").write_text(TRAIN_SCRIPT)
        (code / "empty.py").write_text("")
        out.append(measure("start: python empty.py", [py, "empty.py"], code, base, backends, max(a.repeats, 5)))
        if not a.no_torch:
            os.environ["SMOKE_STEPS"] = str(a.steps)
            argv = [py, "train.py"]
            # SMOKE_STEPS reaches the sandboxed child through the policy env only; keep the default there
            out.append(measure(f"torch: DataLoader(num_workers=2), {a.steps} steps, torch.save",
                               argv, code, base, backends, a.repeats))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    record("sandbox_overhead", vars(a), out)


if __name__ == "__main__":
    main()
