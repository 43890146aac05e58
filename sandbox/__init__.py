"""Run untrusted experiment code (an agent's train.py) in a restricted subprocess.

    from sandbox import SandboxPolicy, Limits, launch
    proc = launch(SandboxPolicy(argv=[sys.executable, "train.py"], cwd=code, run_dir=run, read_only=[data]))
    result = proc.wait()

Backends, best first: bwrap (namespaces) > landlock (+seccomp) > none (limits and clean env only).
See doctor_report() for what is available here and why.
"""

from .backends import available_backends, choose_backend, doctor_report
from .policy import Limits, SandboxPolicy, SandboxResult, SandboxUnavailable
from .runner import SandboxedProcess, launch

__all__ = ["Limits", "SandboxPolicy", "SandboxResult", "SandboxUnavailable", "SandboxedProcess", "launch",
           "choose_backend", "doctor_report", "available_backends"]
