"""The guest's installed packages, read through the build's SSH session.

`QUERY` runs in the guest (POSIX sh): a line with os-release's ID, VERSION_ID and
VERSION_CODENAME, then one line per package from dpkg-query (Debian, Ubuntu) or rpm
(the RHEL family, SUSE), tab-separated. `parse` turns that into a `PackageList`,
which the provision stage stores as `packages.json` and the final stage turns
into the SBOM.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from pim.engine.errors import ProvisionError

FILE = "packages.json"

# dpkg's db:Status-Abbrev is three letters: desired, status, error; "ii " is installed.
# rpm lists only installed packages; its epoch is printed only when there is one.
QUERY = r"""#!/bin/sh
ID=; VERSION_ID=; VERSION_CODENAME=
[ -r /etc/os-release ] && . /etc/os-release
printf 'os\t%s\t%s\t%s\n' "$ID" "$VERSION_ID" "$VERSION_CODENAME"
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='deb\t${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\n'
elif command -v rpm >/dev/null 2>&1; then
  rpm -qa --qf 'rpm\tii \t%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\n'
else
  echo "pim: neither dpkg-query nor rpm is installed: no package list" >&2; exit 3
fi
"""


class Package(BaseModel):
    """One installed package: its name, version (epoch included, `1:2.3-4`), architecture
    (`amd64`, `x86_64`, `all`, `noarch`) and source package when the manager records one."""

    name: str
    version: str
    arch: str
    source: str | None = None


class PackageList(BaseModel):
    """The guest's OS (os-release ID, VERSION_ID, VERSION_CODENAME), its package
    manager (`deb` or `rpm`, the purl types) and its installed packages by name."""

    os_id: str
    os_version: str = ""
    os_codename: str = ""
    manager: str
    packages: list[Package]

    def write(self, folder: Path) -> Path:
        path = folder / FILE
        path.write_text(self.model_dump_json(indent=1))
        return path

    @classmethod
    def read(cls, folder: Path) -> "PackageList | None":
        """The list stored in `folder`, or None when it has none (an image built before PIM read packages)."""
        path = folder / FILE
        return cls.model_validate(json.loads(path.read_text())) if path.is_file() else None


def parse(text: str) -> PackageList:
    """`QUERY`'s output as a PackageList, sorted by name then architecture.

    Raises ProvisionError when the output has no os line or no package (the query
    did not run as expected).
    """
    os_fields: list[str] | None = None
    manager, packages = "", {}
    for line in text.splitlines():
        fields = line.split("\t")
        if fields[0] == "os" and len(fields) >= 4:
            os_fields = fields[1:4]
        elif fields[0] in ("deb", "rpm") and len(fields) >= 5:
            kind, status, name, version, arch = fields[:5]
            # dpkg: installed, or installed with triggers awaiting or pending; not removed,
            # config-files only, half-installed or unpacked. rpm's gpg-pubkey entries are keys.
            if len(status) < 2 or status[1] not in "iWt" or name == "gpg-pubkey":
                continue
            source = fields[5].strip() if len(fields) > 5 else ""
            if kind == "rpm" and source.endswith(".src.rpm"):
                source = source[: -len(".src.rpm")].rsplit("-", 2)[0]
            manager = kind
            # rpm keeps several versions of one package (kernels): each is a component
            packages[(name, arch, version)] = Package(
                name=name, version=version, arch=arch,
                source=source if source and source not in (name, "(none)") else None)
    if os_fields is None or not packages:
        raise ProvisionError("reading the guest's packages gave no list (dpkg-query or rpm output expected)",
                             text.splitlines()[-10:])
    return PackageList(os_id=os_fields[0] or "linux", os_version=os_fields[1], os_codename=os_fields[2],
                       manager=manager, packages=[packages[k] for k in sorted(packages)])
