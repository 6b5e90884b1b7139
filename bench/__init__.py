"""Benchmarks of a running (or freshly started) service: `seqserve bench classify|tag|translate|generate|complete`.

`core` generates load and computes statistics, `report` writes tables and plots, `classify`, `tag` and
`translate` are the workloads (`onetext` is what classify and tag share: one text per request, service against
bare engine, fp32 against int8). Nothing here imports torch, except to quantize an int8 variant or to read a
tagger's data; matplotlib only when plotting.
"""
