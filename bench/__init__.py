"""Benchmarks that print side-by-side ratios (interleaved A/B, medians and spread) and append JSON
lines with machine info to bench/results.jsonl. `python -m bench` runs them all, `--smoke` in seconds
(CI); each is also runnable alone (`python -m bench.server_scale --help`). Never timed assertions."""
