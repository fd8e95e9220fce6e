#!/usr/bin/env bash
# A real SLURM cluster with two fake nodes (n1, n2) on this one machine, from Debian's packages,
# for the tests and for trying the SLURM path without a cluster. Needs root (apt, munge, slurmd).
#   launch/local_slurm.sh start DIR     then: export SLURM_CONF=DIR/slurm.conf
#   launch/local_slurm.sh stop DIR
set -euo pipefail
action=${1:?usage: local_slurm.sh start|stop DIR}
state=$(realpath -m "${2:?usage: local_slurm.sh start|stop DIR}")

if [[ $action == stop ]]; then
  for pidfile in "$state"/slurmd-n1.pid "$state"/slurmd-n2.pid "$state"/slurmctld.pid "$state"/munged.pid; do
    [[ -f $pidfile ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  exit 0
fi

if ! command -v slurmctld >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$state"/{state,spool,log} /run/munge /var/lib/munge /var/log/munge
# The first node of a job becomes MASTER_ADDR, so the fake names must resolve.
grep -qE '(^|\s)n1(\s|$)' /etc/hosts || echo "127.0.0.1 n1 n2" >> /etc/hosts
if [[ ! -s /etc/munge/munge.key ]]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
/usr/sbin/munged --force --pid-file="$state/munged.pid" 2>/dev/null || true

cat > "$state/slurm.conf" <<CONF
ClusterName=llip-local
SlurmctldHost=$(hostname -s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
MessageTimeout=10
StateSaveLocation=$state/state
SlurmdSpoolDir=$state/spool/%n
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd-%n.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
NodeName=n[1-2] NodeHostname=$(hostname -s) Port=[17001-17002] CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
# SLURM 22.05 cannot disable cgroups; v1 with IgnoreSystemd loads without systemd.
printf 'CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n' > "$state/cgroup.conf"

export SLURM_CONF="$state/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N n1
slurmd -f "$SLURM_CONF" -N n2
for _ in $(seq 1 60); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && { echo "local SLURM up: export SLURM_CONF=$SLURM_CONF"; exit 0; }
  sleep 1
done
echo "local SLURM did not come up; see $state/log" >&2
exit 1
