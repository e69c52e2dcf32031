"""``npfl-course similarity``'s settings, configurable in ``nbgrader_config.py``.

As nbgrader's own options::

    c.NpflSimilarity.threshold = 0.7          # pairs listed at or above this similarity
    c.NpflSimilarity.noise_threshold = 25     # shortest shared passage that counts (chars)
    c.NpflSimilarity.guarantee_threshold = 0  # passages this long are always found (0: noise)
    c.NpflSimilarity.expected = True          # answers like a reference solution: expected
    c.NpflSimilarity.report_pairs = 50        # pairs shown side by side in the HTML
    c.NpflSimilarity.jobs = 0                 # processes reading notebooks (0: CPUs)

The command line's flags (``--threshold``, ``--noise``, ``--report-pairs``, ``--jobs``,
``--no-expected``) override these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from traitlets import Bool, Float, Integer
from traitlets.config import Configurable


@dataclass(frozen=True)
class Settings:
    """What a similarity run uses (see :class:`NpflSimilarity` for each field)."""

    threshold: float = 0.7
    noise_threshold: int = 25
    guarantee_threshold: int = 0
    expected: bool = True
    report_pairs: int = 50
    jobs: int = 0

    def __post_init__(self) -> None:
        checks = {
            "threshold": (self.threshold, 0.0 < self.threshold <= 1.0, "in (0, 1]"),
            "noise_threshold": (self.noise_threshold, self.noise_threshold >= 5, ">= 5"),
            "guarantee_threshold": (
                self.guarantee_threshold,
                self.guarantee_threshold == 0 or self.guarantee_threshold >= self.noise_threshold,
                f"0 or >= noise_threshold ({self.noise_threshold})",
            ),
            "report_pairs": (self.report_pairs, self.report_pairs >= 0, ">= 0"),
            "jobs": (self.jobs, self.jobs >= 0, ">= 0 (0: the number of CPUs)"),
        }
        for name, (value, ok, allowed) in checks.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value!r}")

    @property
    def window(self) -> int:
        """copydetect's winnowing window: ``guarantee - noise + 1`` (1: every k-gram)."""
        return max(self.guarantee_threshold, self.noise_threshold) - self.noise_threshold + 1

    def job_count(self) -> int:
        return self.jobs or os.cpu_count() or 1


class NpflSimilarity(Configurable):
    """How ``npfl-course similarity`` compares a class's answers."""

    threshold = Float(
        Settings.threshold,
        help="Pairs of students whose answers are at least this similar (0 to 1) are "
        "listed; an answer at least this similar to the instructor's solution or a "
        "variant counts as matching it.",
    ).tag(config=True)
    noise_threshold = Integer(
        Settings.noise_threshold,
        help="copydetect's noise threshold: the shortest shared passage that counts, in "
        "characters of normalised code.",
    ).tag(config=True)
    guarantee_threshold = Integer(
        Settings.guarantee_threshold,
        help="copydetect's guarantee threshold: shared passages this long are always "
        "found; 0 (copydetect's default): the noise threshold, every passage. Larger "
        "keeps fewer fingerprints (winnowing) and is faster.",
    ).tag(config=True)
    expected = Bool(
        Settings.expected,
        help="Mark a cell as expected, and leave it out of a pair's similarity, where "
        "both students' answers match the instructor's solution or a variant in "
        "variants.py.",
    ).tag(config=True)
    report_pairs = Integer(
        Settings.report_pairs, help="Pairs shown side by side in the HTML report."
    ).tag(config=True)
    jobs = Integer(
        Settings.jobs, help="Processes reading the notebooks; 0: the number of CPUs."
    ).tag(config=True)

    def settings(self, **overrides) -> Settings:
        """The configured settings, with ``overrides`` (flags given) that are not None.

        Raises:
            ValueError, TypeError: A value out of range, naming the option.
        """
        names = (
            "threshold",
            "noise_threshold",
            "guarantee_threshold",
            "expected",
            "report_pairs",
            "jobs",
        )
        unknown = set(overrides) - set(names)
        if unknown:
            raise TypeError(f"unknown similarity setting(s): {', '.join(sorted(unknown))}")
        values = {name: getattr(self, name) for name in names}
        try:
            Settings(**values)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"c.NpflSimilarity.{exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return Settings(**values)
