"""nbgrader's Autograde converter, driven one submission and one phase at a time.

:class:`Converter` registers the sanitizing preprocessors (with :class:`RestoreCells`)
or the grading ones (without execution, which the sandbox does); :func:`faster_nbgrader`
caches what nbgrader rebuilds for every submission; :class:`NoteHandler` turns
nbgrader's warnings into notes.
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator

from nbconvert.preprocessors import ExecutePreprocessor
from nbgrader.converters import Autograde
from nbgrader.preprocessors import DeduplicateIds

from npfl_course.autograde.restore import RestoreCells


class Converter(Autograde):
    """nbgrader's Autograde converter, driven one submission and one phase at a time."""

    def _init_preprocessors(self) -> None:
        self.exporter._preprocessors = []
        if self._sanitizing:
            steps = list(self.sanitize_preprocessors)
            after = [i + 1 for i, step in enumerate(steps) if issubclass(step, DeduplicateIds)]
            steps.insert(after[0] if after else 0, RestoreCells)
        else:  # the notebook was executed in the sandbox already
            steps = [s for s in self.autograde_preprocessors if not _is_execute(s)]
        for step in steps:
            self.exporter.register_preprocessor(step)


def _is_execute(step) -> bool:
    return isinstance(step, type) and issubclass(step, ExecutePreprocessor)


@contextlib.contextmanager
def faster_nbgrader() -> Iterator[None]:
    """Two caches for what nbgrader rebuilds for every submission, inside the block.

    nbgrader opens a new ``Gradebook`` (a new SQLAlchemy engine, whose SQL it then
    compiles afresh) a dozen times per submission, and validates cell metadata with
    ``jsonschema.validate``, which checks the schema itself every time. Here one engine
    per database URL is reused and the validator is built once; the results are the same.
    """
    import jsonschema
    from nbgrader import api
    from nbgrader.nbgraderformat import common

    engines: dict[tuple, object] = {}
    validators: dict[int, object] = {}
    create = api.create_engine

    def create_engine(url, *args, **kwargs):
        key = (str(url), *args, *sorted(kwargs.items()))
        if key not in engines:
            engines[key] = create(url, *args, **kwargs)
        return engines[key]

    def validate(instance, schema):
        if id(schema) not in validators:
            validators[id(schema)] = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validators[id(schema)].iter_errors(instance))
        if error is not None:
            raise error

    cached = types.SimpleNamespace(**{**vars(jsonschema), "validate": validate})
    api.create_engine, common.jsonschema = create_engine, cached
    try:
        yield
    finally:
        api.create_engine, common.jsonschema = create, jsonschema
        for engine in engines.values():
            engine.dispose()


class NoteHandler(logging.Handler):
    """Collects nbgrader's warnings about one submission (edited cells, ...) as notes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Attribute 'checksum'" not in message:  # RestoreCells says which cells were edited
            self.notes.append(message.strip()[:300])
