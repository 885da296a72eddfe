"""Pulumi front end: `pim.Image` and `pim.Deployment` as dynamic resources.

    resources.py    the classes a Pulumi program uses (program side)
    image.py        ImageProvider: check, diff, create, read, update, delete of a build
    deployment.py   DeploymentProvider: the same for a Proxmox template or AMIs
    inputs.py       resource inputs -> engine objects (Config, TargetSpec), failures, diffs
    worker.py       long work (build, deploy, delete) in a child process: progress to the
                    engine log, heartbeats, customTimeouts as deadlines
    ops.py          what that child process runs: engine calls only

Nothing here is imported by `import pim`: the classes are looked up on first use.
The provider classes are pickled by reference into each resource's `__provider`
(module and class name), so their module paths are part of the stack state format.
"""

from typing import Any

__all__ = ["Image", "Deployment"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pim.pulumi_provider import resources

        return getattr(resources, name)
    raise AttributeError(f"module 'pim.pulumi_provider' has no attribute {name!r}")
