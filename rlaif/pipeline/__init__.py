"""The pipeline engine: YAML spec -> validated DAG -> batched, cached, resumable run."""
