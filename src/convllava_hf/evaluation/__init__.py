"""Evaluating ConvLLaVA: loading for benchmarks, RefCOCO-style grounding, and the lmms-eval model plugin."""
