"""pointseg's benchmark sections, run by ``scripts/bench.py`` (``make bench``).

Each section is a :class:`benchmarks.core.Section` in its own module: it measures its figures
against a baseline timed in the same run and renders its own markdown and plots. The order
and the names ``--only`` accepts come from :data:`benchmarks.registry.SECTIONS`.
"""
