"""nbgrader's Autograde converter, driven one submission and one phase at a time,
through nbgrader's public API only.

nbgrader's ``Autograde.convert_single_notebook`` runs both of its phases (sanitize,
then execute and grade) on one notebook in one go; we need the sanitized notebook,
then our sandboxed execution, then nbgrader's grading. :class:`Phases` gives each phase
its own exporter, built from the converter's public, configurable lists
``Autograde.sanitize_preprocessors`` (plus :class:`RestoreCells`) and
``Autograde.autograde_preprocessors`` (without the execution step, which the sandbox
does), and drives them with ``init_single_notebook_resources`` and
``write_single_notebook``, as ``BaseConverter.convert_single_notebook`` does.
:class:`NoteHandler` turns nbgrader's warnings into notes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from nbconvert.preprocessors import ExecutePreprocessor
from nbgrader.converters import Autograde
from nbgrader.preprocessors import DeduplicateIds
from traitlets.utils.importstring import import_item

from npfl_course.autograde.restore import RestoreCells


class Phases:
    """nbgrader's two autograde phases for one submission, each with its own exporter.

    Args:
        converter (Autograde): nbgrader's converter for the submission (its
            ``coursedir`` names the assignment and student; its ``writer`` is set).
    """

    def __init__(self, converter: Autograde) -> None:
        self.converter = converter
        folders = converter.coursedir
        student, assignment = folders.student_id, folders.assignment_id
        self.source = Path(folders.format_path(folders.submitted_directory, student, assignment))
        self.dest = Path(folders.format_path(folders.autograded_directory, student, assignment))
        steps = [_class(step) for step in converter.sanitize_preprocessors]
        after = [i + 1 for i, step in enumerate(steps) if _is_subclass(step, DeduplicateIds)]
        steps.insert(after[0] if after else 0, RestoreCells)
        self._sanitizer = self._exporter(steps)
        self._grader = self._exporter(
            [
                step
                for step in map(_class, converter.autograde_preprocessors)
                if not _is_subclass(step, ExecutePreprocessor)
            ]
        )

    def _exporter(self, steps: list):
        converter = self.converter
        exporter = converter.exporter_class(parent=converter, config=converter.config)
        for step in steps:
            exporter.register_preprocessor(step)
        return exporter

    def resources(self, name: str) -> dict:
        """nbgrader's resources for notebook ``name`` of this submission."""
        return self.converter.init_single_notebook_resources(str(self.source / f"{name}.ipynb"))

    def sanitize(self, notebook, name: str, **extra) -> tuple[str, dict]:
        """Phase 1: ``notebook`` (a NotebookNode) sanitized, written to the autograded folder.

        ``extra`` goes into the resources (for :class:`RestoreCells`). Returns the JSON
        written and the resources after the preprocessors.
        """
        resources = {**self.resources(name), **extra}
        output, resources = self._sanitizer.from_notebook_node(notebook, resources=resources)
        self.converter.write_single_notebook(output, resources)
        return output, resources

    def grade(self, name: str) -> None:
        """Phase 3: nbgrader's grading steps on the executed ``autograded/.../name.ipynb``."""
        path = os.fspath(self.dest / f"{name}.ipynb")
        output, resources = self._grader.from_filename(path, resources=self.resources(name))
        self.converter.write_single_notebook(output, resources)


def _class(step):
    """A preprocessor as configured (a class, or its dotted name as config files give it)."""
    return import_item(step) if isinstance(step, str) else step


def _is_subclass(step, base: type) -> bool:
    return isinstance(step, type) and issubclass(step, base)


class NoteHandler(logging.Handler):
    """Collects nbgrader's warnings about one submission (edited cells, ...) as notes."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Attribute 'checksum'" not in message:  # RestoreCells says which cells were edited
            self.notes.append(message.strip()[:300])
