"""Driver scripts: one module per pipeline (DEFAULTS, validate, build), the registry and the CLI."""

# name -> module exposing DEFAULTS: dict, validate(config) and build(config) -> core.dag.Pipeline
PIPELINES: dict[str, str] = {
    "ingest": "pipelines.ingest",
    # Until the end-to-end demo lands, `demo` is the smallest real pipeline.
    "demo": "pipelines.ingest",
}
