"""Reports of a run and of an evaluation: Markdown and terminal tables, figures, the run's report.md."""
