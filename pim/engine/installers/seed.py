"""A cloud-init NoCloud seed ISO ("cidata"), for an installer that reads its
autoinstall from a CD instead of over HTTP (no network at boot, or a typed boot
command that cannot carry a URL).

Built with pycdlib in-process: no xorriso/genisoimage needed on the host. The
ISO carries creation times, so a cache key hashes the files, not the ISO.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path

from pim.engine.errors import InputError

VOLUME_ID = "cidata"  # what NoCloud looks for (it also accepts CIDATA)


def build_seed_iso(files: Mapping[str, bytes], dest: Path) -> Path:
    """Write an ISO labelled cidata holding files (e.g. user-data, meta-data) at its root."""
    import pycdlib

    bad = [name for name in files if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name)]
    if bad:
        raise InputError(f"seed ISO: file names {bad} must be 1-64 letters, digits, '.', '_' or '-'")
    cd = pycdlib.PyCdlib()
    # Joliet limits the volume id to 16 characters, which "cidata" fits; Rock Ridge
    # and Joliet both carry the real names ("user-data" is no valid ISO 9660 name).
    cd.new(interchange_level=3, vol_ident=VOLUME_ID, joliet=3, rock_ridge="1.09")
    tmp = dest.with_name(dest.name + ".part")
    try:
        for index, (name, data) in enumerate(sorted(files.items())):
            iso_name = f"/F{index:06d}.;1"  # 8.3-safe stand-in; readers use the other names
            cd.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path=f"/{name}")
        cd.write(str(tmp))
        tmp.replace(dest)  # a crashed build never leaves a complete-looking seed
    finally:
        cd.close()
        tmp.unlink(missing_ok=True)
    return dest

