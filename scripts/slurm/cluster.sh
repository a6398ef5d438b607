#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, loopback only, for tests of dnd's job arrays:
# Debian's munge, slurmctld and slurmd (installed with apt when missing; needs root).
#   scripts/slurm/cluster.sh up      # start; prints the SLURM_CONF to export
#   scripts/slurm/cluster.sh down    # stop the daemons (state stays in $DND_SLURM_DIR)
#   scripts/slurm/cluster.sh status
# State, logs and the config live in $DND_SLURM_DIR (default /tmp/dnd-slurm).
set -euo pipefail
DIR=${DND_SLURM_DIR:-/tmp/dnd-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

install() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge >/dev/null
}

config() {
  mkdir -p "$DIR"/{state,spool,log}
  local host mem
  host=$(hostname -s)
  # Memory Slurm may hand out: what the machine has, less 2 GiB for everything else.
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
  cat > "$CONF" <<CONF
ClusterName=dnd
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SlurmUser=root
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmdSpoolDir=$DIR/spool
StateSaveLocation=$DIR/state
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

# Whether the daemon of pid file $1 (in $DIR) is running.
running() { [ -f "$DIR/$1" ] && kill -0 "$(cat "$DIR/$1" 2>/dev/null)" 2>/dev/null; }

up() {
  install
  config
  mkdir -p /run/munge && chown munge:munge /run/munge
  pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
  munge -n | unmunge >/dev/null
  running slurmctld.pid || slurmctld -f "$CONF"
  running slurmd.pid || slurmd -f "$CONF"
  for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && { echo "export SLURM_CONF=$CONF"; return; }
    sleep 0.5
  done
  echo "the node did not come up; logs in $DIR/log" >&2
  exit 1
}

down() {
  for d in slurmd slurmctld; do
    if running $d.pid; then
      kill "$(cat "$DIR/$d.pid")"
      while running $d.pid; do sleep 0.2; done
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
