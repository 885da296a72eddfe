"""Everything PIM itself writes into a build guest, as text.

These bytes end up in (or shape) the image, so the stage keys hash them as content
(`keys.guest_files`): editing any of them rebuilds exactly the stages that use them.
"""

from __future__ import annotations

# Put before a step's script when it has no #! line of its own.
STEP_PRELUDE = "#!/bin/sh\nset -e\n"

# Runs last, as root, over the build key's SSH session. Leaves a generic image, as
# the distributions' own cloud images are: identity comes from cloud-init (or, with
# it off, from the first boot) on each clone. `PIM_ROOT` names another root to
# generalize instead of / (PIM's tests run it on stand-in trees); the commands that
# act on the running system (package managers, journalctl, fstrim) run only for /.
GENERALIZE = r"""#!/bin/sh
set -eu
say() { echo "pim: $*"; }
R="${PIM_ROOT:-}"
live() { [ -z "$R" ]; }
if [ "$PIM_CLOUD_INIT" = 1 ]; then
  if live && ! command -v cloud-init >/dev/null 2>&1; then
    say "installing cloud-init"
    if command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q cloud-init
    elif command -v dnf >/dev/null 2>&1; then dnf install -y cloud-init
    elif command -v yum >/dev/null 2>&1; then yum install -y cloud-init
    elif command -v zypper >/dev/null 2>&1; then zypper -n install cloud-init
    else say "cannot install cloud-init: no apt-get, dnf, yum or zypper"; exit 3
    fi
  fi
  # What installers leave for their own run of cloud-init (subiquity, curtin): the
  # datasource pinned to None, networking off, the build VM's network, apt sources
  # kept as installed, cloud-init disabled. A clone's datasource decides instead.
  say "removing the installer's cloud-init settings"
  rm -f "$R"/etc/cloud/cloud-init.disabled "$R"/etc/cloud/cloud.cfg.d/99-installer.cfg \
    "$R"/etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg \
    "$R"/etc/cloud/cloud.cfg.d/90-installer-network.cfg "$R"/etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg
fi
# Whenever cloud-init is there (installed by PIM, or by the installer with cloud_init off):
# what `cloud-init clean --logs --seed` does, without starting cloud-init's Python (15 s
# under emulation): forget every instance, seed and log, so no clone takes itself for the
# build VM. With cloud_init off the installer's own settings stay (they keep it inert).
if [ -d "$R"/var/lib/cloud ] || [ -d "$R"/etc/cloud ]; then
  say "cleaning cloud-init state"
  rm -rf "$R"/var/lib/cloud/* "$R"/var/log/cloud-init.log "$R"/var/log/cloud-init-output.log
fi
# The package list for the SBOM, read now that every package is in and before any
# cleaning; into /run (tmpfs: never part of the image), where PIM reads and removes it.
if [ -n "${PIM_PACKAGES:-}" ] && [ -f "$PIM_PACKAGES" ]; then
  sh "$PIM_PACKAGES" > /run/pim-packages.tsv 2>&1 || true
  rm -f "$PIM_PACKAGES"
fi
say "removing network settings bound to the build VM"
if [ -f "$R"/etc/netplan/00-installer-config.yaml ] || [ -f "$R"/etc/netplan/50-cloud-init.yaml ]; then
  rm -f "$R"/etc/netplan/00-installer-config.yaml "$R"/etc/netplan/50-cloud-init.yaml
  if [ "$PIM_CLOUD_INIT" != 1 ]; then  # cloud-init would write the clone's own; without it, DHCP on every NIC
    printf '%s\n' 'network:' '  version: 2' '  ethernets:' '    pim-all:' '      match: {name: "e*"}' \
      '      dhcp4: true' '      dhcp6: true' > "$R"/etc/netplan/01-pim-dhcp.yaml
    chmod 600 "$R"/etc/netplan/01-pim-dhcp.yaml
  fi
fi
for f in "$R"/etc/NetworkManager/system-connections/*.nmconnection "$R"/etc/sysconfig/network-scripts/ifcfg-*; do
  if [ -f "$f" ]; then sed -i -e '/^mac-address=/d' -e '/^HWADDR=/d' "$f"; fi
done
rm -f "$R"/etc/udev/rules.d/70-persistent-net.rules
rm -rf "$R"/var/lib/dhcp/*.leases "$R"/var/lib/dhclient/* "$R"/var/lib/NetworkManager/*lease* \
  "$R"/var/lib/NetworkManager/timestamps "$R"/var/lib/wicked/*
say "removing random seeds"
rm -f "$R"/var/lib/systemd/random-seed "$R"/var/lib/urandom/random-seed "$R"/var/lib/random-seed \
  "$R"/var/lib/systemd/credential.secret
if live; then
  if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi
  if command -v dnf >/dev/null 2>&1; then dnf clean all >/dev/null || true
  elif command -v yum >/dev/null 2>&1; then yum clean all >/dev/null || true; fi
  if command -v zypper >/dev/null 2>&1; then zypper -q clean --all || true; fi
fi
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/dnf/* "$R"/var/cache/yum/* "$R"/var/cache/zypp/packages/*
say "emptying machine-id"
: > "$R"/etc/machine-id
if [ -f "$R"/var/lib/dbus/machine-id ] && [ ! -L "$R"/var/lib/dbus/machine-id ]; then rm -f "$R"/var/lib/dbus/machine-id; fi
say "removing SSH host keys"
rm -f "$R"/etc/ssh/ssh_host_*
if [ "$PIM_CLOUD_INIT" != 1 ] && [ -d "$R"/etc/systemd/system ] \
    && ! grep -qs keygen "$R"/lib/systemd/system/ssh*.service "$R"/usr/lib/systemd/system/ssh*.service \
    && [ ! -e "$R"/etc/systemd/system/pim-ssh-host-keys.service ]; then
  # Without cloud-init nothing makes a clone's host keys on Debian and Ubuntu (RHEL's
  # sshd-keygen and SUSE's sshd-gen-keys-start do): a first-boot unit does.
  say "adding a unit that makes the SSH host keys at first boot"
  printf '%s\n' '[Unit]' 'Description=Make the SSH host keys this machine lacks (PIM)' \
    'Before=ssh.service sshd.service' 'ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key' '' \
    '[Service]' 'Type=oneshot' 'ExecStart=/usr/bin/ssh-keygen -A' '' '[Install]' 'WantedBy=multi-user.target' \
    > "$R"/etc/systemd/system/pim-ssh-host-keys.service
  mkdir -p "$R"/etc/systemd/system/multi-user.target.wants
  ln -sf /etc/systemd/system/pim-ssh-host-keys.service "$R"/etc/systemd/system/multi-user.target.wants/
fi
say "removing the build key"
for f in "$R"/root/.ssh/authorized_keys "$R"/home/*/.ssh/authorized_keys; do
  if [ -f "$f" ]; then sed -i "/ $PIM_KEY_COMMENT\$/d" "$f"; fi
done
say "emptying logs, shell history and temporary files"
if live && command -v journalctl >/dev/null 2>&1; then
  journalctl --rotate >/dev/null 2>&1 || true; journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
rm -rf "$R"/var/log/installer  # the installer's own logs, its answers among them
if [ -d "$R"/var/log ]; then
  find "$R"/var/log -path "$R"/var/log/journal -prune -o -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) \
    -exec rm -f {} + 2>/dev/null || true
  find "$R"/var/log -path "$R"/var/log/journal -prune -o -type f -exec truncate -s 0 {} + 2>/dev/null || true
fi
rm -f "$R"/root/.bash_history "$R"/root/.ash_history "$R"/root/.zsh_history "$R"/root/.lesshst "$R"/root/.viminfo \
  "$R"/home/*/.bash_history "$R"/home/*/.zsh_history "$R"/home/*/.lesshst "$R"/home/*/.viminfo
for d in "$R"/tmp "$R"/var/tmp; do
  if [ -d "$d" ]; then find "$d" -mindepth 1 -maxdepth 1 ! -name 'pim-generalize' -exec rm -rf {} + 2>/dev/null || true; fi
done
if [ "$PIM_TRIM" = 1 ] && live; then
  say "trimming free space"
  fstrim -av || say "fstrim is not supported here; the image stays larger"
fi
sync
"""
