"""The build and deploy engine. Imports nothing from pim.cli or pim.pulumi_provider."""
