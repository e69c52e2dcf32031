"""npfl_course: instructor tools (parallel, sandboxed auto-grading on nbgrader)."""
