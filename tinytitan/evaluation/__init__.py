"""Zero-shot downstream evaluation: lm-evaluation-harness tasks read from local files, scored on tinytitan's model."""
