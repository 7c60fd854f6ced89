"""Thin Prefect tasks, each calling one ``puresound_core`` function (issue 3: preset flows).

Retries with jitter on storage / network tasks only, never on deterministic DSP.
"""
