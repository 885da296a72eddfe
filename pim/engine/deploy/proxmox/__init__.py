"""Proxmox VE target: a built image as a VM template, through the API with a token.

    backend.py  deploy / exists / delete: the target interface pim.engine.deploy calls
    params.py   pure parts: version rules, content-addressed names, VM parameters
    api.py      the PVE API (proxmoxer): calls, tasks polled to their end, VMs, volumes
    upload.py   PVE 8.4+: the qcow2 uploaded as `import` content, then `import-from`
    shell.py    before 8.4: the node's shell (SFTP upload + `qm importdisk`)

proxmoxer and paramiko are imported only when these modules are used.
"""
