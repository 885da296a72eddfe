"""Everything PIM itself writes into a build guest, as text.

These bytes end up in (or shape) the image, so the stage keys hash them as content
(`keys.guest_files`): editing any of them rebuilds exactly the stages that use them.
"""

from __future__ import annotations

# Put before a step's script when it has no #! line of its own.
STEP_PRELUDE = "#!/bin/sh\nset -e\n"

# Runs last, as root, over the build key's SSH session. Leaves a generic image:
# identity comes from cloud-init at deploy time.
GENERALIZE = r"""#!/bin/sh
set -eu
say() { echo "pim: $*"; }
if [ "$PIM_CLOUD_INIT" = 1 ]; then
  if ! command -v cloud-init >/dev/null 2>&1; then
    say "installing cloud-init"
    if command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q cloud-init
    elif command -v dnf >/dev/null 2>&1; then dnf install -y cloud-init
    elif command -v yum >/dev/null 2>&1; then yum install -y cloud-init
    elif command -v zypper >/dev/null 2>&1; then zypper -n install cloud-init
    else say "cannot install cloud-init: no apt-get, dnf, yum or zypper"; exit 3
    fi
  fi
  # What `cloud-init clean --logs --seed` does, without starting cloud-init's
  # Python (15 s under emulation): forget every instance, seed and log.
  say "cleaning cloud-init state"
  rm -rf /var/lib/cloud/* /var/log/cloud-init.log /var/log/cloud-init-output.log
fi
# The package list for the SBOM, read now that every package is in and before any
# cleaning; into /run (tmpfs: never part of the image), where PIM reads and removes it.
if [ -n "${PIM_PACKAGES:-}" ] && [ -f "$PIM_PACKAGES" ]; then
  sh "$PIM_PACKAGES" > /run/pim-packages.tsv 2>&1 || true
  rm -f "$PIM_PACKAGES"
fi
if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
say "emptying machine-id"
: > /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then rm -f /var/lib/dbus/machine-id; fi
say "removing SSH host keys"
rm -f /etc/ssh/ssh_host_*
say "removing the build key"
for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do
  if [ -f "$f" ]; then sed -i "/ $PIM_KEY_COMMENT\$/d" "$f"; fi
done
if command -v journalctl >/dev/null 2>&1; then journalctl --rotate >/dev/null 2>&1 || true; journalctl --vacuum-time=1s >/dev/null 2>&1 || true; fi
rm -f /root/.bash_history
if [ "$PIM_TRIM" = 1 ]; then
  say "trimming free space"
  fstrim -av || say "fstrim is not supported here; the image stays larger"
fi
sync
"""
