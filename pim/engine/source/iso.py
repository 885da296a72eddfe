"""Read files out of an installer ISO (kernel and initrd for direct kernel boot)."""

from __future__ import annotations

from pathlib import Path

from pim.engine.errors import InputError


def extract(iso: Path, members: dict[str, Path]) -> None:
    """Copy ISO members (absolute ISO paths) to local files."""
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    cd = pycdlib.PyCdlib()
    try:
        cd.open(str(iso))
    except PyCdlibException as e:
        raise InputError(f"{iso} is not a readable ISO 9660 image: {e}") from None
    try:
        for member, dest in members.items():
            tmp = dest.with_name(dest.name + ".part")
            try:
                cd.get_file_from_iso(str(tmp), **_path_kw(cd, member))
            except PyCdlibException as e:
                tmp.unlink(missing_ok=True)
                raise InputError(
                    f"{member} not found in {iso.name} ({e}); set installer.boot.kernel/initrd "
                    "to the paths the ISO really has"
                ) from None
            tmp.replace(dest)
    finally:
        cd.close()


def _path_kw(cd: object, member: str) -> dict[str, str]:
    # Prefer Rock Ridge / Joliet names (what users see); fall back to plain ISO 9660.
    if getattr(cd, "has_rock_ridge")():
        return {"rr_path": member}
    if getattr(cd, "has_joliet")():
        return {"joliet_path": member}
    return {"iso_path": member.upper() + (";1" if "." in member.rsplit("/", 1)[-1] else "")}
