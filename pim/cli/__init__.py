"""The `pim` command line: thin; turns engine events into progress and errors into exit codes."""
