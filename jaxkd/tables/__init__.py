"""Experiment tables: what `experiments/reproduce_*.py` and `experiments/compare.py` run.

`sweep` runs a config over seeds and settings and reads the results back, `stats` holds
the paired tests and intervals a table reports, `reproduce` turns a table's description
(`experiments/configs/reproduce_*.py`) into results JSON, Markdown and plots, and `compare`
writes the teacher-vs-student compression report. Nothing in the training library imports
this package; import its modules by name (`from jaxkd.tables import sweep`).
"""
