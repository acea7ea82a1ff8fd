#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try and test `hydra/launcher=slurm` for real.
#
#   sudo experiments/slurm/local_cluster.sh up       # install (Debian/Ubuntu apt) + start; idempotent
#   experiments/slurm/local_cluster.sh status        # daemons, node state, whether sacct answers
#   sudo experiments/slurm/local_cluster.sh down     # stop what `up` started, by PID file
#
# Needs root (it writes /etc/slurm/*.conf and starts daemons) and, for a first install, apt-get.
# Works without systemd: every daemon is started directly and stopped through its PID file under
# $SOFTMOE_SLURM_DIR (default /tmp/softmoe-slurm), never by process name.
#
# Accounting: MariaDB + slurmdbd are started too. Without accounting there is no `sacct`; submitit
# polls `sacct` for job states, so a job that dies before writing its result (scancel, SIGKILL,
# time limit) stays "UNKNOWN" and the Hydra launcher waits forever. With accounting the same
# failure surfaces at once as an error. MariaDB installs and starts in seconds, so it is cheaper
# than any workaround. (The tests also bound every wait with a timeout, as a second guard.)
#
# Deliberate differences from a production cluster, both to keep tests fast on small machines:
# KillWait=5 (scancel's SIGKILL follows SIGTERM after 5 s instead of 30 s) and no cgroups
# (proctrack/linuxproc + task/affinity, which still pins a job to its --cpus-per-task cores).
set -euo pipefail

STATE=${SOFTMOE_SLURM_DIR:-/tmp/softmoe-slurm}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARKER="# written by softmoe_torch experiments/slurm/local_cluster.sh"
DB_SOCKET=/run/mysqld/mysqld.sock
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

die() { echo "local_cluster.sh: $*" >&2; exit 1; }
log() { echo "local_cluster.sh: $*"; }

alive() {  # alive NAME: the daemon whose PID file is $STATE/NAME.pid is running
    local pid
    [[ -s $STATE/$1.pid ]] || return 1
    pid=$(<"$STATE/$1.pid")
    ps -p "$pid" >/dev/null  # not kill -0: that fails for a non-root user asking for status
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${limit}s (logs in $STATE)"
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get to install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$STATE/apt.log" 2>&1 || die "apt-get update failed (see $STATE/apt.log)"
    apt-get install -y -qq "${missing[@]}" >>"$STATE/apt.log" 2>&1 || die "apt-get install failed (see $STATE/apt.log)"
}

write_conf() {  # write_conf PATH MODE: content from stdin; refuse to clobber a file that is not ours
    local path=$1 mode=$2 tmp
    if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
        die "$path exists and was not written by this script; move it away first"
    fi
    tmp=$(mktemp)
    cat >"$tmp"
    install -m "$mode" "$tmp" "$path"
    rm -f "$tmp"
}

write_configs() {
    local host node
    host=$(hostname -s)
    # the node's real CPUs/sockets/cores/memory, as slurmd itself detects them
    node=$(slurmd -C | head -n 1)
    mkdir -p /etc/slurm
    write_conf "$CONF" 0644 <<EOF
$MARKER
ClusterName=softmoe
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
# no cgroups needed; task/affinity makes --cpus-per-task real (task/none lets a job see every core)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
# faster than the default 30 s, so that scancel/time-limit tests finish quickly
KillWait=5
InactiveLimit=0
MinJobAge=300
# accounting (sacct) through slurmdbd: submitit needs it to notice jobs that died
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    write_conf "$DBD_CONF" 0600 <<EOF
$MARKER
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=softmoe_slurm_acct_db
EOF
}

start_munge() {
    alive munged && return 0
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    # munged checks that its PID file's directory is safe, so it writes its own and we copy the PID
    runuser -u munge -- munged --force
    wait_for 10 munged test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/munged.pid"
    wait_for 10 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
    alive mariadb && return 0
    # a MariaDB that is already serving this socket (e.g. the distribution's service) is reused
    mariadb-admin --socket="$DB_SOCKET" ping >/dev/null 2>&1 && { log "reusing the running MariaDB"; return 0; }
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >"$STATE/mariadb-install.log" 2>&1
    # mariadbd does not daemonize: run it in the background, detached from this shell; it drops to
    # the mysql user, so it keeps its own PID file under /run/mysqld and we record $! (nohup execs)
    nohup mariadbd --user=mysql --skip-networking --socket="$DB_SOCKET" --pid-file=/run/mysqld/mariadbd.pid \
        >"$STATE/mariadb.log" 2>&1 </dev/null &
    echo $! >"$STATE/mariadb.pid"
    wait_for 30 MariaDB mariadb-admin --socket="$DB_SOCKET" ping
}

start_daemon() {  # start_daemon NAME: slurmdbd/slurmctld/slurmd daemonize and write $STATE/NAME.pid
    alive "$1" && return 0
    rm -f "$STATE/$1.pid"
    "$1" >>"$STATE/$1.start.log" 2>&1 || die "$1 failed to start (see $STATE/$1.log)"
    wait_for 20 "$1" alive "$1"
}

node_idle() { sinfo -h -N -o %t | grep -qE '^(idle|mix|alloc)'; }

up() {
    [[ $(id -u) == 0 ]] || die "needs root (writes /etc/slurm and starts daemons); try: sudo $0 up"
    mkdir -p "$STATE/ctld" "$STATE/d"
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_daemon slurmdbd
    # slurmctld registers the cluster in the database itself once slurmdbd answers
    wait_for 30 slurmdbd sacctmgr -n list cluster
    start_daemon slurmctld
    start_daemon slurmd
    # a node that was down (e.g. after a restart) is brought back; harmless when it is idle
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    wait_for 60 "an idle node" node_idle
    wait_for 30 sacct sacct -n -X -S now
    log "up: $(sinfo -h -o '%P %D node(s) %t %c cpus') (state in $STATE)"
}

stop() {  # stop NAME: SIGTERM by PID file, SIGKILL after 20 s
    local name=$1 pid i
    if alive "$name"; then
        pid=$(<"$STATE/$name.pid")
        kill "$pid"
        for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && { log "$name ($pid) ignored SIGTERM; killing"; kill -9 "$pid"; }
        log "stopped $name ($pid)"
    fi
    rm -f "$STATE/$name.pid"
}

down() {
    [[ $(id -u) == 0 ]] || die "needs root; try: sudo $0 down"
    local name
    for name in slurmd slurmctld slurmdbd mariadb munged; do stop "$name"; done
}

status() {
    local name rc=0
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if alive "$name"; then echo "$name: running ($(<"$STATE/$name.pid"))"; else echo "$name: not running"; rc=1; fi
    done
    sinfo -N -o '%N %P %t %c %m' 2>&1 || rc=1
    sacct -n -X -S now >/dev/null 2>&1 && echo "sacct: answers" || { echo "sacct: not answering"; rc=1; }
    return $rc
}

case ${1:-} in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
