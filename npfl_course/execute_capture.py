"""Capturing a running cell's outputs, bounded, and the IPython shell that produces them.

Part of the worker (:mod:`npfl_course.execute`): stream output is kept up to
MAX_STREAM_CHARS per cell, rich output up to MAX_RICH_CHARS, the rest is dropped with a
note. :class:`_State` holds the worker's mutable state (the running cell's sink, the
executor) in one object.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

MAX_STREAM_CHARS = 100_000  # per cell, stdout and stderr together
MAX_RICH_CHARS = 2_000_000  # per cell, display data and results


# ----------------------------------------------------------------------------------
# Capturing a cell's outputs as nbformat outputs
# ----------------------------------------------------------------------------------


class _Outputs:
    """The outputs of the running cell, bounded."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.stream_chars = self.rich_chars = 0
        self.dropped_stream = self.dropped_rich = 0

    def stream(self, name: str, text: str) -> None:
        room = MAX_STREAM_CHARS - self.stream_chars
        if len(text) > room:
            self.dropped_stream += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if not text:
            return
        self.stream_chars += len(text)
        last = self.items[-1] if self.items else None
        if last and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self.items.append({"output_type": "stream", "name": name, "text": text})

    def rich(self, output_type: str, data: dict, metadata: dict, count: int | None) -> None:
        data = {str(k): v for k, v in dict(data).items() if isinstance(v, (str, dict, list))}
        size = sum(len(json.dumps(v)) if not isinstance(v, str) else len(v) for v in data.values())
        if self.rich_chars + size > MAX_RICH_CHARS:
            self.dropped_rich += 1
            return
        self.rich_chars += size
        output = {"output_type": output_type, "data": data, "metadata": _jsonable(metadata)}
        if output_type == "execute_result":
            output["execution_count"] = count
        self.items.append(output)

    def error(self, ename: str, evalue: str, traceback: list[str]) -> None:
        traceback = [str(line)[:10_000] for line in list(traceback)[:200]]
        traceback = traceback or [f"{ename}: {evalue}"]  # feedback shows the traceback
        error = {"output_type": "error", "ename": ename, "evalue": evalue[:10_000]}
        self.items.append({**error, "traceback": traceback})

    def has_error(self) -> bool:
        return any(item["output_type"] == "error" for item in self.items)

    def finish(self) -> list[dict]:
        notes = []
        if self.dropped_stream:
            notes.append(f"{self.dropped_stream} characters of printed output")
        if self.dropped_rich:
            notes.append(f"{self.dropped_rich} displayed object(s)")
        if notes:
            text = f"\n... [output truncated: {' and '.join(notes)} dropped] ...\n"
            self.items.append({"output_type": "stream", "name": "stdout", "text": text})
        return self.items


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return {}


def _text(value: Any) -> str:
    """``str(value)``, also for objects whose ``__str__`` is broken or hostile."""
    try:
        text = str(value)
    except BaseException:  # noqa: BLE001 - a student's exception class may raise anything
        return f"<unprintable {type(value).__name__}>"
    return text if isinstance(text, str) else "<unprintable>"


class _State:
    """Mutable state of the worker, in one object (the guard checks module globals)."""

    sink = _Outputs()  # where the running cell's outputs go
    executor = None  # the Executor, for the SIGUSR1 handler


class _Stream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a running cell."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def encoding(self) -> str:
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        _State.sink.stream(self.name, text)
        return len(text)


# ----------------------------------------------------------------------------------
# The IPython shell
# ----------------------------------------------------------------------------------


def _make_shell():
    """An IPython shell whose displays, results and tracebacks go to ``_State.sink``."""
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    class Publisher(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs):  # fmt: skip
            _State.sink.rich("display_data", data, metadata or {}, None)

        def clear_output(self, wait=False):
            sink = _State.sink
            sink.items = [item for item in sink.items if item["output_type"] == "error"]

    class Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            _State.sink.rich("execute_result", format_dict, md_dict or {}, self.prompt_count)

        def finish_displayhook(self):
            self._is_active = False

    class Shell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Publisher)

        def _showtraceback(self, etype, evalue, stb):
            _State.sink.error(_text(getattr(etype, "__name__", etype)), _text(evalue), stb)

        def enable_gui(self, gui=None):
            pass  # no event loop here; the inline backend needs none

        @contextlib.contextmanager
        def _tee(self, channel):
            yield  # IPython >= 9 would copy all output into the history: unbounded

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    return Shell.instance(config=config)
