"""The similarity part of ``npfl-course demo``: a copy ring, and the top pairs printed.

For the ``regularization`` assignment the demo's class gets two more students: frank
wrote ``dropout`` and ``smooth_labels`` his own way (correct, and like no reference),
and grace handed in his answers with other names, comments, blank lines and the
independent lines swapped. Both get full marks from the autograder; the similarity
report puts them first, the others' answers being the instructor's solution or
variants (expected) or the untouched release.
"""

from __future__ import annotations

import os
from pathlib import Path

RING = {  # assignment -> {student: {solution cell: the body under its signature}}
    "regularization": {
        "frank": {
            "dropout": """\
    if p < 0 or p >= 1:
        raise ValueError(f"dropout probability has to be in [0, 1), got {p}")
    if training and p > 0:
        where = x.device if generator is None else generator.device
        uniform = torch.rand(x.shape, generator=generator, device=where).to(x.device)
        kept = uniform >= p
        return x * kept / (1 - p)
    return x
""",
            "smooth_labels": """\
    dtype = torch.get_default_dtype()
    shape = (*target.shape, num_classes)
    result = torch.full(shape, label_smoothing / num_classes, dtype=dtype, device=target.device)
    peak = torch.full_like(result[..., :1], 1 - label_smoothing)
    result.scatter_add_(-1, target.unsqueeze(-1), peak)
    return result
""",
        },
        "grace": {
            "dropout": """\
    # check the probability first
    if p < 0 or p >= 1:
        raise ValueError(f"dropout probability has to be in [0, 1), got {p}")

    if training and p > 0:
        dev = x.device if generator is None else generator.device  # the generator's device
        r = torch.rand(x.shape, generator=generator, device=dev).to(x.device)
        mask = r >= p  # keep these
        return x * mask / (1 - p)
    return x  # evaluation: identity
""",
            "smooth_labels": """\
    size = (*target.shape, num_classes)
    floating = torch.get_default_dtype()
    # every class gets a / K, the gold one 1 - a more
    out = torch.full(size, label_smoothing / num_classes, dtype=floating, device=target.device)
    gold = torch.full_like(out[..., :1], 1 - label_smoothing)
    out.scatter_add_(-1, target.unsqueeze(-1), gold)
    return out
""",
        },
    },
}
_STUB = "    # YOUR CODE HERE"


def demo_submissions(release, source, assignment: str) -> dict:
    """``{student: notebook}`` of the assignment's copy ring (none for other assignments).

    Each answer is the released cell (signature and docstring) with the ring's body in
    place of the ``# YOUR CODE HERE`` stub.
    """
    from npfl_course.check import cells_by_kind, make_submission

    released = cells_by_kind(release, "solution")
    notebooks = {}
    for student, answers in RING.get(assignment, {}).items():
        replace = {}
        for cell, body in answers.items():
            if cell not in released or _STUB not in released[cell].source:
                return {}  # the assignment changed: no ring rather than a wrong one
            replace[cell] = released[cell].source.split(_STUB)[0] + body
        notebooks[student] = make_submission(release, source, replace)
    return notebooks


def demo_report(course, assignment: str, output: str | os.PathLike, top: int = 5) -> str:
    """``npfl-course similarity``'s table of the ``top`` pairs, its summary and where the
    HTML and CSV reports went (into ``output``)."""
    from npfl_course.similarity.compare import find_similar
    from npfl_course.similarity.report import summary, table, write_reports

    result = find_similar(course, assignment)
    html, csv = write_reports(result, Path(output))
    lines = [f"similarity ({result.seconds:.1f} s):", table(result, top=top), *summary(result)]
    return "\n".join([*lines, f"similarity report: {html}", f"similarity csv:    {csv}"])
