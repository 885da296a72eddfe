"""Terraform / OpenTofu front ends: the external-data helper and the native provider."""
