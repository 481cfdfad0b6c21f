"""Side-by-side benchmarks; each writes JSON under benchmarks/results/."""

import shardwalk  # noqa: F401  (first: it sets Ray's loopback switch before a benchmark imports ray)
