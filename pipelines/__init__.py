"""Driver scripts: one module per pipeline (DEFAULTS, validate, build), the registry and the CLI."""

# name -> module exposing DEFAULTS: dict, validate(config) and build(config) -> shardwalk.core.dag.runner.Pipeline
PIPELINES: dict[str, str] = {
    "ingest": "shardwalk.pipelines.ingest",
    "srrw": "shardwalk.pipelines.srrw",
    "index": "shardwalk.pipelines.index",
    "coreset": "shardwalk.pipelines.coreset",
    "demo": "shardwalk.pipelines.demo",
}
