"""``npfl-course doctor``: what this machine offers the grader, checked, not assumed.

Each line says what was checked and what follows for grading: the sandbox (bubblewrap and
the namespaces it needs), how student code runs without it, Landlock (which hides an
assignment's reference modules from the kernel), the memory limit, the torch
build, and whether torch imports inside the sandbox under the default limits (the check
that catches a CUDA build that cannot be mapped, or a package missing from the sandbox's
view).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile

from npfl_course.sandbox import Limits, isolation, run_sandboxed, unavailable_reason
from npfl_course.worker import landlock_abi


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_in_sandbox(limits: Limits, unsandboxed: bool) -> tuple[bool, str]:
    code = (
        "import resource, torch\n"
        "x = torch.ones(256, 256) @ torch.ones(256, 256)\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "print(torch.__version__, torch.cuda.is_available(), peak)"
    )
    with tempfile.TemporaryDirectory(prefix="npfl-doctor-") as workdir:
        os.chmod(workdir, 0o755)
        result = run_sandboxed([sys.executable, "-c", code], workdir=workdir, limits=limits,
                               require_sandbox=not unsandboxed)  # fmt: skip
    if result.returncode != 0:
        return False, f"{result.reason}: {result.stderr.strip()[-400:]}"
    version, cuda, peak = result.stdout.split()
    return True, (
        f"torch {version} imports and computes ({peak} MB resident at most, "
        f"{result.peak_memory_mb:.0f} MiB anonymous; CUDA visible inside: {cuda})"
    )


def diagnose() -> tuple[list[str], bool]:
    """Lines for people, and whether autograde can grade here without --no-sandbox."""
    import warnings

    lines = [f"python:  {sys.executable} ({sys.version.split()[0]})"]
    try:
        import torch

        cuda = torch.version.cuda
        build = f"CUDA {cuda} build" if cuda else "CPU build"
        devices = torch.cuda.device_count() if cuda else 0
        lines.append(f"torch:   {torch.__version__} ({build}; {devices} GPU(s) visible here; "
                     "grading always runs on the CPU)")  # fmt: skip
    except ImportError as exc:
        lines.append(f"torch:   cannot be imported: {exc}")
    lines.append(f"nbgrader {_version('nbgrader')}, nbclient {_version('nbclient')}, "
                 f"ipykernel {_version('ipykernel')}")  # fmt: skip
    kind, description = isolation()
    why = unavailable_reason()
    lines.append(f"sandbox: {'OK' if why is None else 'UNAVAILABLE'}: {description}")
    if kind != "bwrap":
        lines.append("         autograde refuses to grade here unless given --no-sandbox")
    abi = landlock_abi()
    if abi:
        lines.append(f"hiding:  OK: Landlock (ABI {abi}): the modules an assignment hides "
                     "(c.NpflAutograde.hidden_modules) are unreadable to its kernels")  # fmt: skip
    else:
        lines.append("hiding:  UNAVAILABLE: this Linux kernel offers no Landlock (5.13 or "
                     "newer, not blocked by a seccomp profile): autograde refuses the "
                     "assignments listed in c.NpflAutograde.hidden_modules")  # fmt: skip
    limits = Limits()
    lines.append(f"memory:  RLIMIT_DATA {limits.memory_mb} MiB per process and a watchdog over "
                 "the anonymous memory of all a notebook's processes (works with any torch "
                 "build, without cgroups)")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, text = _torch_in_sandbox(limits, unsandboxed=kind != "bwrap")
    lines.append(f"grading: {'OK' if ok else 'FAILS'}: {text}")
    return lines, ok and kind == "bwrap"
