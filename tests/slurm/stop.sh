#!/usr/bin/env bash
# Stop what start.sh started: cancel jobs, stop slurmd, slurmctld and munged.
state="$1"
export SLURM_CONF="$state/slurm.conf"
scancel --user=root 2>/dev/null || true
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munge/munged.pid"; do
    if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
done
sleep 1
exit 0
