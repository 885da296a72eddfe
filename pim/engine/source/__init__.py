"""Installer media: fetching and verifying the ISO (`fetch`) and reading files out
of it (`iso`)."""
