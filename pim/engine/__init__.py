"""The build and deploy engine. Imports nothing from pim.cli, pim.pulumi_provider or pim.tofu."""
