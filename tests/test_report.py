"""npfl_course.report: the grade table and the PNG, from nbgrader's gradebook."""

from __future__ import annotations

import shutil

import pytest
from nbgrader.api import Gradebook
from tiny_course import tiny_course

from npfl_course.course import CourseError, load_course
from npfl_course.report import grade_table, read_grades, write_report

POINTS = {"test_add": 1.0, "test_mul": 2.0, "test_square": 1.0}
GRADES = {  # student -> auto scores
    "ann": {"test_add": 1.0, "test_mul": 2.0, "test_square": 1.0},
    "ben": {"test_add": 0.0, "test_mul": 2.0, "test_square": 0.0},
    "cid": {"test_add": 1.0, "test_mul": 0.0, "test_square": 0.0},
}


pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")  # nbgrader's


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """The tiny course with a gradebook holding GRADES (written with nbgrader's API)."""
    course = load_course(tiny_course(tmp_path_factory.mktemp("report") / "course"))
    with course.gradebook() as gradebook:
        gradebook.add_assignment("tiny")
        gradebook.add_notebook("tiny", "tiny")
        for name, points in POINTS.items():
            gradebook.add_grade_cell(name, "tiny", "tiny", max_score=points, cell_type="code")
        gradebook.add_assignment("empty")
        for student, scores in GRADES.items():
            gradebook.add_student(student)
            gradebook.add_submission("tiny", student)
            for name, score in scores.items():
                grade = gradebook.find_grade(name, "tiny", "tiny", student)
                grade.auto_score = score
            gradebook.db.commit()
    return course


def test_read_grades(course):
    grades = read_grades(course, "tiny")
    assert grades.tests == list(POINTS) and grades.max_score == 4
    assert grades.totals == {"ann": 4.0, "ben": 2.0, "cid": 1.0}
    assert grades.scores["ben"]["test_mul"] == (2.0, 2.0)
    assert grades.pass_rates() == pytest.approx(
        {"test_add": 2 / 3, "test_mul": 2 / 3, "test_square": 1 / 3}
    )


def test_grade_table(course):
    table = grade_table(course, "tiny").splitlines()
    assert table[0].split() == ["student", "total", *POINTS]
    assert table[1].split() == ["ann", "4", "1", "2", "1"]
    assert table[3].split() == ["cid", "1", "1", "0", "0"]
    assert table[4].split() == ["passed", "67%", "67%", "33%"]
    assert table[5] == "3 submissions, mean 2.33 / 4"
    assert grade_table(course, "empty") == "empty: no graded submissions"


def test_write_report_makes_a_png(course, tmp_path):
    output = write_report(course, "tiny", tmp_path / "deep" / "tiny.png")
    assert output == tmp_path / "deep" / "tiny.png"
    data = output.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_an_unknown_assignment_is_reported(course):
    with pytest.raises(CourseError, match="no assignment 'nope'"):
        read_grades(course, "nope")


def test_a_submission_without_grades_counts_zero(course, tmp_path):
    course = load_course(shutil.copytree(course.directory, tmp_path / "course"))
    with Gradebook(course.db_url) as gradebook:
        gradebook.add_student("dan")
        gradebook.add_submission("tiny", "dan")  # never autograded: scores are None
    grades = read_grades(course, "tiny")
    assert grades.totals["dan"] == 0.0
    assert grades.scores["dan"]["test_add"] == (0.0, 1.0)
