"""Benchmarks of a running (or freshly started) service: `seqserve bench classify|translate`.

`core` generates load and computes statistics, `report` writes tables and plots, `classify` and
`translate` are the two workloads. Nothing here imports torch; matplotlib only when plotting.
"""
