"""Readers of the platform's input files (pure parsing, no Dagster): the survey, transcripts, vote records and
the agent registry. Both the partitions (built from the registries) and the assets read them."""
