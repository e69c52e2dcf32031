"""The student's kernel as a fork of the worker, with torch already imported.

The test cells run in the worker (:mod:`npfl_course.worker.trusted`), so the worker
imports torch and npfl_lib as the kernel does; ``import torch`` is most of what a
notebook costs (docs/benchmarks.md). So the worker imports them once, with the garbage
collector off, and forks a child at once (:class:`Zygote`), before it reads the
notebook (the child's memory never holds the hidden tests) and before any thread or
ZeroMQ context exists. The child starts a new session and waits; when nbclient starts
the kernel, :class:`ZygoteKernelManager` hands it the kernel's command line, environment
and folder, and the child becomes the kernel (``ipykernel``'s own entry point, the
notebook's folder first on ``sys.path`` as ``python -m ipykernel_launcher`` would have
it), its torch shared copy-on-write. Where forking is not possible (threads already
running, no ``os.fork``) the kernel starts as a new process, as before, unless the
assignment hides modules from the kernel: the child makes them unreadable to itself right
after the fork (:mod:`npfl_course.worker.hiding`), and where there is no child the worker
stops rather than start a kernel that can read them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from jupyter_client.manager import AsyncKernelManager


class ForkedProcess:
    """The part of ``subprocess.Popen`` that jupyter_client and the driver use, for a
    child of ours that was forked, not started."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (the driver reaps orphans)
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.01)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """A child forked now that waits to become the kernel (see the module docstring).

    Args:
        close (list[int]): Descriptors the child must not keep (the result channel's).
        hide (list[str]): Modules the child makes unreadable to itself at once, with
            ``ruleset`` (:func:`npfl_course.worker.hiding.apply`).
        ruleset (int | None): The Landlock ruleset's descriptor (the child's copy is
            closed by ``apply``, the caller's is the caller's).
    """

    def __init__(self, close: list[int], hide: Sequence[str] = (),
                 ruleset: int | None = None) -> None:  # fmt: skip
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(write_end)
            _become_kernel(read_end, close, hide, ruleset)
        os.close(read_end)
        self.pid, self.pipe, self.hide = pid, write_end, tuple(hide)

    def launch(self, cmd: list[str], env: dict[str, str], cwd: str) -> ForkedProcess:
        """Turns the child into the kernel ``cmd`` would start; returns the process."""
        if self.pipe < 0:
            raise RuntimeError("the forked kernel was already launched")
        data = json.dumps({"cmd": cmd, "env": env, "cwd": cwd}).encode()
        with os.fdopen(self.pipe, "wb") as pipe:
            self.pipe = -1
            pipe.write(data)
        return ForkedProcess(self.pid)

    def discard(self) -> None:
        """Ends the child when it was not launched (the kernel started otherwise)."""
        if self.pipe >= 0:
            os.close(self.pipe)  # the child reads nothing and exits
            self.pipe = -1
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)


def fork_zygote(close: list[int], hide: Sequence[str] = (),
                ruleset: int | None = None) -> Zygote | None:  # fmt: skip
    """A :class:`Zygote`, or None where forking is not safe or possible."""
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return None
    try:
        return Zygote(close, hide, ruleset)
    except OSError:
        return None


def _become_kernel(pipe: int, close: list[int], hide: Sequence[str],
                   ruleset: int | None) -> None:  # fmt: skip
    """In the forked child: waits for the launch, then runs ipykernel; never returns."""
    status = 1
    try:
        os.setsid()  # its own process group, which interrupts and kills address
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        if hide:
            from npfl_course.worker import hiding

            hiding.apply(ruleset, hide)
        chunks = []
        while chunk := os.read(pipe, 1 << 16):
            chunks.append(chunk)
        os.close(pipe)
        if not chunks:
            os._exit(0)
        spec = json.loads(b"".join(chunks))
        os.chdir(spec["cwd"])
        os.environ.clear()
        os.environ.update(spec["env"])
        command = list(spec["cmd"])
        arguments = command[command.index("ipykernel_launcher") + 1 :]
        sys.path.insert(0, os.getcwd())  # as `python -m ipykernel_launcher` has it
        from ipykernel import kernelapp

        # Its traits' defaults were read from the worker's environment at import: the
        # kernel's parent (it exits with the worker) is given explicitly.
        parent = f"--IPKernelApp.parent_handle={os.getppid()}"
        sys.argv = [kernelapp.__file__, *arguments, parent]
        kernelapp.launch_new_instance()
        status = 0
    except BaseException:  # noqa: BLE001 - the worker sees the kernel die and says why
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _is_our_python_kernel(command: list[str]) -> bool:
    """``[this python, "-m", "ipykernel_launcher", ...]``: what the fork can stand in for."""
    if len(command) < 3 or command[1:3] != ["-m", "ipykernel_launcher"]:
        return False
    try:
        return os.path.realpath(command[0]) == os.path.realpath(sys.executable)
    except OSError:
        return False


class ZygoteKernelManager(AsyncKernelManager):
    """A kernel manager that launches the kernel from a :class:`Zygote` when it has one
    and the kernel's command is ``python -m ipykernel_launcher``."""

    zygote: Zygote | None = None

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is None or not _is_our_python_kernel(kernel_cmd):
            if zygote is not None:
                zygote.discard()
                if zygote.hide:  # a kernel started otherwise could read them
                    raise RuntimeError(
                        f"cannot hide {', '.join(zygote.hide)}: the notebook's kernel "
                        f"({' '.join(kernel_cmd[:3])}) is not this Python's ipykernel"
                    )
            await super()._async_launch_kernel(kernel_cmd, **kw)
            return
        provisioner = self.provisioner
        assert provisioner is not None
        env = dict(kw.get("env") or os.environ)
        env.setdefault("JPY_PARENT_PID", str(os.getpid()))
        cwd = str(kw.get("cwd") or os.getcwd())
        process = zygote.launch(kernel_cmd, env, cwd)
        provisioner.process = process
        provisioner.pid = process.pid
        provisioner.pgid = process.pid  # the child started its own session
        provisioner.cwd = cwd
        self._reconcile_connection_info(provisioner.connection_info)
