"""Configuration models: `pim.yaml` parsed and checked into typed specs (`spec`),
and the size and duration units they use (`units`)."""
