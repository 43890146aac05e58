#!/usr/bin/env bash
# A real single-node SLURM (munge + slurmctld + slurmd from Debian packages), no systemd, as root.
# Fake GPUs are char devices in gres.conf, so SLURM hands out gres/gpu and sets CUDA_VISIBLE_DEVICES
# per job, and queues a job when they are all taken. Accounting is off: state comes from squeue and
# `scontrol show job` (MinJobAge), the fallback tools/executors.py uses where sacct has no database.
#
#   .ci/slurm.sh install   the Debian packages (once; what .ci/run calls)
#   .ci/slurm.sh up        config under $SLURM_DIR, daemons started, waits until the node is idle
#   .ci/slurm.sh down      stops the daemons this script started
#   .ci/slurm.sh env       prints the export line for SLURM_CONF
#
# Pitfalls met (see ../shared/research/slurm_single_node.sh): gres File= must be a char device
# (mknod c 195 N), plain files are refused; munged refuses root (runuser -u munge); without
# slurmdbd, AccountingStorageTRES=gres/gpu is fatal, so it is not set.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/slurm-ci}
export SLURM_CONF=$SLURM_DIR/slurm.conf
FAKE_GPUS=${FAKE_GPUS:-2}
PKGS="slurmctld slurmd slurm-client munge"

install() {
  dpkg -s $PKGS >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || { echo "slurm.sh: installing SLURM needs root: sudo apt-get install -y $PKGS" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
}

running() { [ -f "$SLURM_DIR/$1.pid" ] && kill -0 "$(cat "$SLURM_DIR/$1.pid")" 2>/dev/null; }

idle() { sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|mixed|allocated'; }

up() {
  install
  [ "$(id -u)" = 0 ] || { echo "slurm.sh: starting SLURM daemons needs root" >&2; exit 1; }
  if running slurmctld && running slurmd && idle; then sinfo -h -o "%P %a %D %T %G"; return 0; fi
  local node cpus mem
  node=$(hostname -s); cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$SLURM_DIR"/{state,spool,log}
  mkdir -p /run/munge && chown munge:munge /run/munge
  if [ ! -f /etc/munge/munge.key ]; then
    mungekey -c -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  for i in $(seq 0 $((FAKE_GPUS - 1))); do [ -c "$SLURM_DIR/gpu$i" ] || mknod "$SLURM_DIR/gpu$i" c 195 "$i"; done
  cat > "$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=300
GresTypes=gpu
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$node CPUs=$cpus RealMemory=$mem Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$node Name=gpu File=$SLURM_DIR/gpu[0-$((FAKE_GPUS - 1))]" > "$SLURM_DIR/gres.conf"
  running slurmctld || slurmctld -f "$SLURM_CONF"
  running slurmd || slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 150); do idle && break; sleep 0.2; done
  idle || { echo "slurm.sh: the node did not come up" >&2; tail -20 "$SLURM_DIR"/log/*.log >&2; exit 1; }
  sinfo -h -o "%P %a %D %T %G"
}

down() {
  for p in slurmd slurmctld; do running $p && kill "$(cat "$SLURM_DIR/$p.pid")" || true; done
}

case "${1:-up}" in
  install) install ;;
  up) up ;;
  down) down ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 install|up|down|env" >&2; exit 2 ;;
esac
