"""GPU inside the sandbox: does CUDA work with the device nodes, and is it really gone without them?

    python -m bench.gpu_sandbox_check [--json out.json]

For a machine with an NVIDIA GPU (it has not been run on one yet). Checks, for each available backend:
  1. plain subprocess: torch.cuda.is_available() (the reference);
  2. sandbox with gpu=None (auto: /dev/nvidia* passed in): must be True, and a few training steps run on
     "cuda" -- False here is the silent CPU fallback this script exists to catch;
  3. sandbox with gpu=False (no device nodes): must be False (proves the nodes are what grants access).
Exit status: 0 all as expected, 1 a failed expectation, 2 nothing to check (no GPU nodes / no CUDA torch).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Limits, SandboxPolicy, available_backends, doctor_report, launch  # noqa: E402
from sandbox.torch_smoke import TRAIN_SCRIPT  # noqa: E402
from bench.common import record  # noqa: E402

warnings.simplefilter("ignore")


def smoke_line(text: str) -> dict | None:
    for ln in reversed(text.splitlines()):
        if ln.startswith("SMOKE "):
            return json.loads(ln[6:])
    return None


def run_plain(code: Path, run_dir: Path) -> dict:
    env = dict(os.environ, AR_RUN_DIR=str(run_dir), SMOKE_STEPS="4")
    p = subprocess.run([sys.executable, "train.py"], cwd=code, env=env, capture_output=True, text=True, timeout=600)
    return smoke_line(p.stdout) or {"ok": False, "error": p.stderr[-1500:]}


def run_boxed(code: Path, run_dir: Path, backend: str, gpu) -> dict:
    pol = SandboxPolicy(argv=[os.path.normpath(sys.executable), "train.py"], cwd=code, run_dir=run_dir,
                        read_only=[code], env={"AR_RUN_DIR": str(run_dir), "SMOKE_STEPS": "4"}, gpu=gpu,
                        limits=Limits(wall_seconds=600))
    t0 = time.time()
    res = launch(pol, backend=backend).wait()
    info = smoke_line((run_dir / "stdout.log").read_text(errors="replace")) or {"ok": False}
    info.update(status=res.status, returncode=res.returncode, wall_s=round(time.time() - t0, 2),
                gpu_nodes=res.isolation.get("gpu_nodes"))
    if not info.get("ok"):
        info["stderr_tail"] = (run_dir / "stderr.log").read_text(errors="replace")[-1500:]
    return info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    nodes = sorted(glob.glob("/dev/nvidia*"))
    report: dict = {"nodes": nodes, "doctor": {k: v for k, v in doctor_report().items() if k != "backends"}}
    print("device nodes:", nodes or "none")
    try:
        nv = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = nv.stdout.strip()
        print(nv.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        report["nvidia_smi"] = None
    failures = []
    with tempfile.TemporaryDirectory(prefix="sbx-gpu-") as base:
        code = Path(base) / "code"
        code.mkdir()
        (code / "train.py").write_text(TRAIN_SCRIPT)
        plain = run_plain(code, Path(tempfile.mkdtemp(dir=base)))
        report["plain"] = plain
        print("plain:", json.dumps(plain))
        if not nodes or not plain.get("cuda_available"):
            print("NOTHING TO CHECK: no /dev/nvidia* nodes or torch has no CUDA here")
            report["verdict"] = "skipped"
            if a.json:
                Path(a.json).write_text(json.dumps(report, indent=1))
            return 2
        av = available_backends()
        for backend in ("bwrap", "landlock", "none"):
            if not av[backend]["available"]:
                report[backend] = {"skipped": av[backend]["why"]}
                continue
            with_nodes = run_boxed(code, Path(tempfile.mkdtemp(dir=base)), backend, None)
            without = run_boxed(code, Path(tempfile.mkdtemp(dir=base)), backend, False)
            report[backend] = {"with_nodes": with_nodes, "without_nodes": without}
            print(f"{backend:9s} with nodes: cuda={with_nodes.get('cuda_available')} device={with_nodes.get('device')} "
                  f"status={with_nodes['status']} ({with_nodes['wall_s']} s)")
            print(f"{backend:9s} without   : cuda={without.get('cuda_available')} status={without['status']}")
            if not (with_nodes.get("ok") and with_nodes.get("cuda_available") and with_nodes.get("device") == "cuda"):
                failures.append(f"{backend}: CUDA not usable WITH the device nodes (silent CPU fallback?)")
            if backend != "none" and without.get("cuda_available"):
                failures.append(f"{backend}: CUDA usable WITHOUT the device nodes (isolation leak)")
    report["failures"] = failures
    report["verdict"] = "ok" if not failures else "FAILED"
    print("\nVERDICT:", report["verdict"], *failures, sep="\n  ")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))
    record("gpu_sandbox_check", vars(a), report)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
