"""Benchmarks (IFEval, AlpacaEval 2.0, MT-Bench), judges and reports."""
