#!/usr/bin/env bash
# Usage: bash launchers/slurm-local.sh [start|stop|env]
#
# A one-node Slurm cluster on localhost (munged + slurmctld + slurmd) for the tests that run the
# real sbatch scripts. Needs root and Debian's slurmd, slurmctld, slurm-client and munge
# (launchers/setup.sh installs them). `start` is idempotent and prints the line to export;
# `env` prints it without starting anything; `stop` ends the daemons.
#   REGMIX_SLURM_DIR   state, spool, logs, config   (default /tmp/regmix-slurm)
#   REGMIX_SLURM_PORT  slurmctld port; slurmd uses the next one (default 16817)
set -euo pipefail

STATE=${REGMIX_SLURM_DIR:-/tmp/regmix-slurm}
PORT=${REGMIX_SLURM_PORT:-16817}
CPUS=${REGMIX_SLURM_CPUS:-$(nproc)}
CONF=$STATE/slurm.conf
MUNGE_SOCKET=$STATE/munge-run/munge.socket.2

write_config() {
  mkdir -p "$STATE"/{spool,state,log,munge-key,munge-run}
  cat > "$CONF" <<CONF
ClusterName=regmix
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
  if [ -S "$MUNGE_SOCKET" ] && munge -n --socket="$MUNGE_SOCKET" >/dev/null 2>&1; then return; fi
  # munged refuses a key readable by others and a socket folder not searchable by all.
  chown munge:munge "$STATE/munge-key" "$STATE/munge-run"
  chmod 700 "$STATE/munge-key"
  chmod 755 "$STATE/munge-run"
  if [ ! -f "$STATE/munge-key/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge-key/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$STATE/munge-key/munge.key"
    chmod 400 "$STATE/munge-key/munge.key"
  fi
  # --force: a socket left by a munged that was killed (a previous session) is stale, not in use.
  runuser -u munge -- munged --force --socket="$MUNGE_SOCKET" --key-file="$STATE/munge-key/munge.key" \
    --pid-file="$STATE/munge-run/munged.pid" --log-file="$STATE/munge-run/munged.log" \
    --seed-file="$STATE/munge-run/munged.seed"
}

wait_for_idle_node() {
  for _ in $(seq 1 60); do
    if SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then return 0; fi
    sleep 0.5
  done
  echo "slurm-local: the node did not come up; see $STATE/log" >&2
  return 1
}

start() {
  if SLURM_CONF=$CONF scontrol ping 2>/dev/null | grep -q UP; then
    echo "export SLURM_CONF=$CONF"
    return
  fi
  write_config
  start_munge
  SLURM_CONF=$CONF slurmctld -f "$CONF"
  SLURM_CONF=$CONF slurmd -f "$CONF" -N localhost
  wait_for_idle_node
  echo "export SLURM_CONF=$CONF"
}

stop() {
  for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munge-run/munged.pid"; do
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 [start|stop|env]" >&2; exit 2 ;;
esac
