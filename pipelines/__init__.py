"""Driver scripts: one module per pipeline (DEFAULTS, validate, build), the registry and the CLI."""

import workers  # noqa: F401  (first: it sets Ray's loopback switch before anything here imports ray)

# name -> module exposing DEFAULTS: dict, validate(config) and build(config) -> core.dag.Pipeline
PIPELINES: dict[str, str] = {
    "ingest": "pipelines.ingest",
    "srrw": "pipelines.srrw",
    "index": "pipelines.index",
    "coreset": "pipelines.coreset",
    "demo": "pipelines.demo",
}
