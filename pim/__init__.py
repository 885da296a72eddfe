"""PIM: installer ISO -> cloud-init-ready qcow2 -> Proxmox template / AWS AMI.

Importing this package is cheap on purpose: the engine, QEMU control and every
IaC front end are imported only by the code that uses them.
"""

__version__ = "0.1.0"
