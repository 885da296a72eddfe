"""PIM: installer ISO -> cloud-init-ready qcow2 -> Proxmox template / AWS AMI.

Importing this package is cheap on purpose: the engine, QEMU control and every
IaC front end are imported only by the code that uses them. `pim.Image` and
`pim.Deployment` (Pulumi resources) are looked up on first use, so the CLI never
imports Pulumi.
"""

from typing import Any

__version__ = "0.1.0"

_PULUMI_RESOURCES = ("Image", "Deployment")


def __getattr__(name: str) -> Any:
    if name in _PULUMI_RESOURCES:
        from pim import pulumi_provider

        return getattr(pulumi_provider, name)
    raise AttributeError(f"module 'pim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PULUMI_RESOURCES])
