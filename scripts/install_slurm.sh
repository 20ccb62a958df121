#!/usr/bin/env bash
# Installs what tests/cluster/slurm.py needs to run a throwaway Slurm cluster on loopback:
# slurmctld, slurmd, the client commands (srun, sinfo, ...) and munge, from the distribution's
# packages (Debian/Ubuntu, as root). Does nothing when they are already installed.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # where the daemons live; not on every user's PATH

TOOLS=(slurmctld slurmd srun sinfo squeue munged)
PACKAGES=(slurmctld slurmd slurm-client munge)

fail() { echo "install_slurm.sh: $*" >&2; exit 1; }
all_there() {
    for tool in "${TOOLS[@]}"; do command -v "$tool" >/dev/null || return 1; done
}

all_there && exit 0
command -v apt-get >/dev/null || fail "no apt-get here: install ${PACKAGES[*]} by hand"
[ "$(id -u)" -eq 0 ] || fail "must run as root to install ${PACKAGES[*]} (try: sudo $0)"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The packages' own services stay down (no /etc/slurm/slurm.conf): tests start their daemons.
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
        >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    fail "apt-get could not install ${PACKAGES[*]} (its output above)"
fi
all_there || fail "installed ${PACKAGES[*]}, yet one of ${TOOLS[*]} is still missing"
echo "install_slurm.sh: installed $(slurmd -V) and munge"
