"""Builds a tiny DeepSeek-V3-style GGUF with group-limited expert routing
(expert_group_count = 2, expert_group_used_count = 1) using the shared tiny-model generator.

Usage: python make_grouped_deepseek2.py SMOLLM2.gguf OUTDIR GENERATOR.py
Writes OUTDIR/deepseek2-tiny-v3-grouped.gguf (deterministic: fixed seed, F32 weights).
"""
import importlib.util
import sys

smol, outdir, generator = sys.argv[1], sys.argv[2], sys.argv[3]
sys.argv = [generator, smol, outdir]
spec = importlib.util.spec_from_file_location("make_tiny_deepseek2", generator)
mk = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mk)
mk.make("v3", 4321, dims=dict(mk.SMALL, groups=(2, 1)), name="deepseek2-tiny-v3-grouped.gguf")
