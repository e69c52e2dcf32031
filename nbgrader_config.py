"""nbgrader configuration: run nbgrader from the repository root.

    nbgrader generate_assignment losses_and_gradients --force   # -> release/<name>/
    nbgrader autograde losses_and_gradients                     # submitted/ -> autograded/
    nbgrader generate_feedback losses_and_gradients             # -> feedback/

Sources are ``assignments/<name>/<name>.ipynb`` (nbgrader's ``source/<name>/`` renamed).
The instructor outputs (release/, submitted/<student>/<name>/, autograded/, feedback/
and gradebook.db) go to ``$NPFL_COURSE_OUTPUT`` if set, else the repository root; they
are git-ignored. Collected submissions belong in ``<output>/submitted/<student>/<name>/``.
"""

import os
from pathlib import Path

c = get_config()  # noqa: F821 - injected by traitlets when nbgrader loads this file

REPO = Path(__file__).resolve().parent
OUTPUT = Path(os.environ.get("NPFL_COURSE_OUTPUT") or REPO).expanduser().resolve()
OUTPUT.mkdir(parents=True, exist_ok=True)

c.CourseDirectory.course_id = "npfl-course"
# nbgrader puts every step (source, release, ...) under one root and builds regular
# expressions from the paths, so the root is the output folder and the sources are
# reached by a relative path (no absolute path inside a regex, no special characters).
c.CourseDirectory.root = str(OUTPUT)
c.CourseDirectory.source_directory = os.path.relpath(REPO / "assignments", OUTPUT)
c.CourseDirectory.db_url = f"sqlite:///{OUTPUT / 'gradebook.db'}"
# variants.py holds alternative (correct) solutions for the tests of the tests: it must
# never be released to students.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "variants.py"]

# A cell that runs longer than this is stopped and graded as failed; each test cell also
# has its own, shorter time_limit(...). Every assignment autogrades in about a minute.
CELL_TIMEOUT_S = int(os.environ.get("NPFL_CELL_TIMEOUT", "120"))
c.Execute.timeout = CELL_TIMEOUT_S
c.ExecutePreprocessor.timeout = CELL_TIMEOUT_S

# Students' markdown and HTML, JavaScript and SVG outputs are made inert wherever nbgrader
# renders a notebook as HTML: the formgrader's submission pages (which run with the
# instructor's session) and the feedback. `npfl-course autograde` cleans the autograded
# notebooks too; this is the second layer (and covers notebooks graded before it).
c.HTMLExporter.preprocessors = ["npfl_course.feedback.SanitizeStudentContent"]
# The feedback, also when generated from the formgrader or by `nbgrader generate_feedback`,
# shows a test cell's released code, score and error message, not its hidden tests.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "npfl_course.feedback.HideHiddenTests",
    "npfl_course.feedback.SanitizeStudentContent",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
# True: the feedback shows the test cells' full code and tracebacks, hidden tests included.
c.NpflFeedback.show_hidden_tests = False

# While `npfl-course autograde` grades an assignment, the student's kernel cannot read
# these modules of npfl_lib (Linux's Landlock makes their files unreadable): a submission
# can neither call nor copy the reference solutions it is asked to write. The test cells
# run outside the kernel and keep them. An import of a hidden module still works in the
# kernel; using it raises ForbiddenCallError. "npfl_lib": all of it but npfl_lib.grading.
# The kernel must keep what the locked cells and honest solutions use (manual_backprop's
# data sets; the Trainer of ensembling and regularized_training): see README.md.
c.NpflAutograde.hidden_modules = {
    "losses_and_gradients": ["npfl_lib"],
    "regularization": ["npfl_lib"],
    "optimizers": ["npfl_lib"],
    "init_and_clipping": ["npfl_lib"],
    "manual_backprop": [
        "npfl_lib.manual",
        "npfl_lib.functional",
        "npfl_lib.nn",
        "npfl_lib.optim",
        "npfl_lib.init",
        "npfl_lib.clip",
        "npfl_lib.metrics",
        "npfl_lib.trainer",
        "npfl_lib.ensemble",
    ],
    "ensembling": ["npfl_lib.ensemble", "npfl_lib.metrics"],
    "regularized_training": ["npfl_lib.optim.groups"],
}
