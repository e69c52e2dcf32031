"""Which pairs of students share their answers: winnowed fingerprints, cell by cell.

Each answer (normalised, less the release's code: :mod:`npfl_course.similarity.normalize`)
is fingerprinted with copydetect (MOSS's winnowing: hashes of every passage of
``noise_threshold`` characters, winnowed with a window of ``guarantee - noise + 1``).
For a pair of answers, copydetect's measure: the positions of each answer whose hash
the other answer has, each extended to a passage of ``noise_threshold`` characters
(``copydetect.utils.get_copied_slices``), cover its *shared* characters. The cell's
similarity is the shared part of the two answers together,
``(shared_a + shared_b) / (length_a + length_b)`` (lengths as copydetect's token
coverage), and a pair's similarity is the same over all the cells it is compared in,
so a long copied cell weighs more than a one-liner. A pair is compared in a cell where
both answered (a cell left as released is not an answer) and, with ``expected`` set,
not both answers match a reference (the instructor's solution or a variant of
``variants.py``: at least ``threshold`` similar to it): two students who both wrote
an expected solution did not copy from each other. Such cells are marked "expected".

Cost, for ``n`` students: identical answers are fingerprinted and compared once; every
pair is bounded at once from the number of fingerprints they share (a sparse product
per cell; a position covers at most ``noise_threshold`` shared characters) in ``n x n``
arrays (500 students: 250,000 numbers), and only the pairs whose bound reaches the
threshold are compared exactly (numpy's ``isin`` and copydetect's slices, the same
numbers as ``copydetect.compare_files``: ``tests/test_similarity.py`` checks it). So
the time grows as ``n**2`` with numpy's small constant, plus the exact comparisons,
which grow with the number of pairs near the threshold; the memory as two ``n x n``
arrays of float64 (5,000 students: 400 MB).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field

import numpy as np

from npfl_course.similarity.answers import Answer, CellKey, ClassAnswers, read_class
from npfl_course.similarity.settings import Settings


def load_copydetect():
    """The ``copydetect`` module (it imports matplotlib.pyplot: without a display, Agg)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import copydetect

    return copydetect


def fingerprint(text: str, settings: Settings | None = None):
    """copydetect's ``CodeFingerprint`` of a normalised answer, or None if it has none
    (shorter than ``noise_threshold``)."""
    settings = settings or Settings()
    if len(text) < settings.noise_threshold:
        return None
    copydetect = load_copydetect()
    result = copydetect.CodeFingerprint(
        "answer.py", settings.noise_threshold, settings.window, filter=False, fp=io.StringIO(text)
    )
    return result if result.token_coverage > 0 else None


def cell_similarity(a, b) -> float:
    """The similarity of two fingerprints by ``copydetect.compare_files``: the shared
    part of both answers together."""
    _, (similarity_a, similarity_b), _ = load_copydetect().compare_files(a, b)
    shared = similarity_a * a.token_coverage + similarity_b * b.token_coverage
    return float(shared / (a.token_coverage + b.token_coverage))


def similarity(text_a: str, text_b: str, settings: Settings | None = None) -> float | None:
    """The similarity of two normalised answers (None: one is too short to compare)."""
    a, b = fingerprint(text_a, settings), fingerprint(text_b, settings)
    return None if a is None or b is None else cell_similarity(a, b)


class _Print:
    """A fingerprint as arrays: the winnowed positions, their hashes, the distinct
    hashes (sorted) with their counts, and copydetect's token coverage."""

    __slots__ = ("counts", "distinct", "hashes", "length", "positions")

    def __init__(self, printed) -> None:
        items = list(printed.hash_idx.items())
        sizes = [len(positions) for _, positions in items]
        self.hashes = np.repeat(np.array([h for h, _ in items], dtype=np.int64), sizes)
        self.positions = np.array([p for _, ps in items for p in ps], dtype=np.int64)
        self.distinct, self.counts = np.unique(self.hashes, return_counts=True)
        self.length = float(printed.token_coverage)


def _shared(a: _Print, b: _Print, k: int, get_copied_slices) -> float:
    """Characters of ``a`` in passages it shares with ``b`` (copydetect's token overlap)."""
    where = a.positions[np.isin(a.hashes, b.distinct)]
    if not len(where):
        return 0.0
    slices = get_copied_slices(where, k)
    return float(np.sum(slices[1] - slices[0]))


@dataclass
class CellResult:
    """A pair in one cell.

    Attributes:
        score (float | None): Their similarity there; None where not compared.
        expected (str): Where both answers match a reference: which ones
            (``"solution"``, ``"solution / ALTERNATIVE 2: ..."``); else empty.
        why (str): Why not compared (``"alice: left as released"``), else empty.
    """

    score: float | None = None
    expected: str = ""
    why: str = ""


@dataclass
class Pair:
    """Two students, their similarity over the cells they are compared in, each cell."""

    students: tuple[str, str]
    score: float
    cells: dict[CellKey, CellResult] = field(default_factory=dict)


@dataclass
class Similarity:
    """The outcome of :func:`compare`.

    Attributes:
        answers (ClassAnswers): What was read (students, references, skipped ones).
        settings (Settings): What was used.
        pairs (list[Pair]): The pairs at or above the threshold, most similar first.
        matches (dict[str, dict[CellKey, tuple[str, float]]]): Per student, the cells
            whose answer matches a reference: (the closest reference, its similarity).
        states (dict[str, dict[CellKey, str]]): Per student, the cells not compared and
            why (``"left as released"``, ``"missing"``, ``"too short"``).
        bounded (int): Pairs whose bound reached the threshold (compared exactly).
        seconds (float): Time of the comparison (reading excluded).
    """

    answers: ClassAnswers
    settings: Settings
    pairs: list[Pair] = field(default_factory=list)
    matches: dict[str, dict[CellKey, tuple[str, float]]] = field(default_factory=dict)
    states: dict[str, dict[CellKey, str]] = field(default_factory=dict)
    bounded: int = 0
    seconds: float = 0.0

    @property
    def students(self) -> list[str]:
        return list(self.answers.students)


class _Cell:
    """One cell across the class: each distinct answer fingerprinted once."""

    def __init__(self, key: CellKey, answers: ClassAnswers, settings: Settings, copydetect):
        self.key, self.k = key, settings.noise_threshold
        self.slices = copydetect.utils.get_copied_slices
        students = list(answers.students)
        self.uid = np.full(len(students), -1)  # each student's distinct answer, or -1
        self.states: dict[str, str] = {}
        self.prints: list[_Print] = []
        self.texts: dict[str, int] = {}
        self.cache: dict[tuple[int, int], float] = {}
        for index, student in enumerate(students):
            answer: Answer | None = answers.students[student].get(key)
            if answer is None:
                self.states[student] = "missing"
            elif not answer.text.strip():
                self.states[student] = "left as released"
            elif answer.text in self.texts:
                self.uid[index] = self.texts[answer.text]
            else:
                printed = fingerprint(answer.text, settings)
                if printed is None:
                    self.states[student] = "too short"
                    continue
                self.texts[answer.text] = self.uid[index] = len(self.prints)
                self.prints.append(_Print(printed))
        self.matches: list[tuple[str, float] | None] = []
        references = {}
        for name, reference in answers.references.get(key, {}).items():
            printed = fingerprint(reference.text, settings)
            if printed is not None:
                references[name] = _Print(printed)
        for one in self.prints:
            scores = {name: self._score(one, ref) for name, ref in references.items()}
            best = max(scores, key=scores.get, default=None)
            good = best is not None and scores[best] >= settings.threshold
            self.matches.append((best, scores[best]) if good else None)
        self.matched = np.array([m is not None for m in self.matches] + [False])
        self.matched &= settings.expected  # the last entry stands for uid -1

    def _both(self, a: _Print, b: _Print) -> float:
        return _shared(a, b, self.k, self.slices) + _shared(b, a, self.k, self.slices)

    def _score(self, a: _Print, b: _Print) -> float:
        return self._both(a, b) / (a.length + b.length)

    def shared(self, u: int, v: int) -> float:
        """The shared characters of two distinct answers, both together (cached)."""
        if u == v:
            return 2 * self.prints[u].length
        key = (u, v) if u < v else (v, u)
        if key not in self.cache:
            a, b = self.prints[u], self.prints[v]
            self.cache[key] = _shared(a, b, self.k, self.slices) + _shared(
                b, a, self.k, self.slices
            )
        return self.cache[key]

    def bound(self, numerator: np.ndarray, denominator: np.ndarray) -> None:
        """Adds each pair's bound on their shared characters here, and their length, to
        the class's arrays (pairs both expected here excluded)."""
        from scipy import sparse

        if len(self.prints) == 0:
            return
        rows, columns, counts, column_of = [], [], [], {}
        for row, one in enumerate(self.prints):
            rows += [row] * len(one.distinct)
            columns += [column_of.setdefault(int(h), len(column_of)) for h in one.distinct]
            counts.append(one.counts)
        shape = (len(self.prints), len(column_of))
        counted = sparse.csr_matrix((np.concatenate(counts).astype(float), (rows, columns)), shape)
        binary = counted.copy()
        binary.data[:] = 1.0
        shared = (counted @ binary.T).toarray()  # [u, v]: positions of u whose hash v has
        length = np.array([one.length for one in self.prints])
        bound = np.minimum(length[:, None], self.k * shared)
        bound = bound + bound.T
        total = length[:, None] + length[None, :]
        present = np.flatnonzero(self.uid >= 0)
        uid = self.uid[present]
        index = np.ix_(present, present)
        keep = ~(self.matched[uid][:, None] & self.matched[uid][None, :])
        numerator[index] += np.where(keep, bound[np.ix_(uid, uid)], 0.0)
        denominator[index] += np.where(keep, total[np.ix_(uid, uid)], 0.0)


def compare(answers: ClassAnswers, settings: Settings | None = None) -> Similarity:
    """Compares every pair of the class's students, cell by cell (module docstring)."""
    settings = settings or Settings()
    copydetect = load_copydetect()
    start = time.perf_counter()
    result = Similarity(answers, settings)
    students = list(answers.students)
    n = len(students)
    numerator, denominator = np.zeros((n, n)), np.zeros((n, n))
    cells = [_Cell(key, answers, settings, copydetect) for key in answers.cells]
    for index, student in enumerate(students):
        result.states[student] = {c.key: c.states[student] for c in cells if student in c.states}
        result.matches[student] = {
            c.key: c.matches[c.uid[index]]
            for c in cells
            if c.uid[index] >= 0 and c.matches[c.uid[index]] is not None
        }
    for cell in cells:
        cell.bound(numerator, denominator)
    upper = np.triu(denominator > 0, k=1)
    candidates = np.argwhere(upper & (numerator >= settings.threshold * denominator - 1e-9))
    result.bounded = len(candidates)
    for i, j in candidates:
        pair = _pair(result, cells, int(i), int(j))
        if pair is not None and pair.score >= settings.threshold:
            result.pairs.append(pair)
    result.pairs.sort(key=lambda p: (-p.score, p.students))
    position = {student: index for index, student in enumerate(students)}
    for pair in result.pairs:  # expected cells: their similarity, for the report
        i, j = (position[s] for s in pair.students)
        for cell in cells:
            found = pair.cells[cell.key]
            if found.expected:
                u, v = cell.uid[i], cell.uid[j]
                found.score = cell.shared(u, v) / (cell.prints[u].length + cell.prints[v].length)
    result.seconds = time.perf_counter() - start
    return result


def _pair(result: Similarity, cells: list[_Cell], i: int, j: int) -> Pair | None:
    """The exact pair over its cells, or None if it is compared in none."""
    students = list(result.answers.students)
    a, b = students[i], students[j]
    shared = length = 0.0
    found = {}
    for cell in cells:
        u, v = cell.uid[i], cell.uid[j]
        if u < 0 or v < 0:
            why = "; ".join(f"{s}: {cell.states[s]}" for s in (a, b) if s in cell.states)
            found[cell.key] = CellResult(why=why)
        elif cell.matched[u] and cell.matched[v]:
            names = dict.fromkeys([cell.matches[u][0], cell.matches[v][0]])
            found[cell.key] = CellResult(expected=" / ".join(names))
        else:
            together = cell.prints[u].length + cell.prints[v].length
            common = cell.shared(u, v)
            found[cell.key] = CellResult(common / together)
            shared += common
            length += together
    if length == 0:
        return None
    return Pair((a, b), shared / length, found)


def find_similar(
    course, assignment: str, settings: Settings | None = None, students: list[str] | None = None
) -> Similarity:
    """Reads the class's answers to ``assignment`` and compares them (:func:`compare`)."""
    settings = settings or Settings()
    answers = read_class(course, assignment, jobs=settings.job_count(), students=students)
    return compare(answers, settings)
