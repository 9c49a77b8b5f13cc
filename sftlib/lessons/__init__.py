"""The lesson layer: what notebooks, the demo and tests use to show the library at work.

The toy world, the demo, two-rank demonstrations, ZeRO partition reports, the kill-during-save
demonstration, the memory planner and the hybrid-engine demonstration live here. The library
(everything else under ``sftlib/``) never imports this package; ``tests/test_layout.py`` checks it.
"""
