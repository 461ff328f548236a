"""Benchmarks with their official scoring: JudgeBench and RM-Bench.

Loading (`data`), task building and scoring (`judgebench`, `rmbench`, `calibration`) are pure and
model-free; `run` turns them into resumable batch jobs; `report` and `plot` present the results.
"""
