# A real single-node Slurm for the launcher tests (tests/slurm.rs): Debian's slurm-wlm and munge,
# slurmctld + slurmd on localhost with a minimal slurm.conf (one node with this machine's CPUs,
# one default partition, process tracking by process group, no cgroups: containers often lack
# them), every state, spool and log file in a temporary folder, munge on a private socket.
# Stopped at the end. Exports SLURM_CONF (so that sbatch, squeue and scontrol find this
# cluster) and BEATLAB_TEST_SLURM=1.

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt_install slurm-wlm munge
fi
slurm_dir="$(mktemp -d /tmp/beatlab-slurm.XXXXXX)"
mkdir -p "$slurm_dir"/{munge,state,spool,log}
chmod 700 "$slurm_dir/munge"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
slurm_ctl_port="$(free_port)"
slurm_d_port="$(free_port)"
slurm_node="$(hostname -s)"
# Stops the daemon whose pid file is $1 and waits (up to 20 s) until it is gone, so that the
# folder it writes in can be removed.
slurm_stop() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 0
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# munge: a fresh key, its socket in the temporary folder (the cluster's AuthInfo names it).
dd if=/dev/urandom of="$slurm_dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$slurm_dir/munge/munge.key"
munged --force --key-file="$slurm_dir/munge/munge.key" \
    --socket="$slurm_dir/munge/munge.socket" \
    --pid-file="$slurm_dir/munge/munged.pid" \
    --log-file="$slurm_dir/log/munged.log" \
    --seed-file="$slurm_dir/munge/munged.seed"
on_exit "slurm_stop '$slurm_dir/munge/munged.pid'; rm -rf '$slurm_dir'"

cat >"$slurm_dir/slurm.conf" <<CONF
ClusterName=beatlab-test
SlurmctldHost=$slurm_node(127.0.0.1)
SlurmctldPort=$slurm_ctl_port
SlurmdPort=$slurm_d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$slurm_dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$slurm_dir/state
SlurmdSpoolDir=$slurm_dir/spool
SlurmctldPidFile=$slurm_dir/slurmctld.pid
SlurmdPidFile=$slurm_dir/slurmd.pid
SlurmctldLogFile=$slurm_dir/log/slurmctld.log
SlurmdLogFile=$slurm_dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=1
KillWait=15
MinJobAge=600
SlurmdTimeout=60
NodeName=$slurm_node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$slurm_dir/slurm.conf"

slurmctld -i -f "$SLURM_CONF"
on_exit "slurm_stop '$slurm_dir/slurmctld.pid'"
slurmd -N "$slurm_node" -f "$SLURM_CONF"
# Stopped first (registered last): a job still running is killed with its daemon.
on_exit "scancel --quiet --user=\$(id -un) 2>/dev/null; slurm_stop '$slurm_dir/slurmd.pid'"

# Ready when the node is idle (slurmd registered with slurmctld).
for _ in $(seq 1 60); do
    if sinfo --noheader --node="$slurm_node" --format=%T 2>/dev/null | grep -q '^idle'; then
        break
    fi
    sleep 0.5
done
if ! sinfo --noheader --node="$slurm_node" --format=%T | grep -q '^idle'; then
    echo "test.sh: Slurm did not come up; logs in $slurm_dir/log:" >&2
    tail -n 20 "$slurm_dir"/log/*.log >&2
    exit 1
fi
export BEATLAB_TEST_SLURM=1
echo "test.sh: Slurm $(sinfo --version | awk '{print $2}') on $slurm_node, $(nproc) CPUs ($slurm_dir)"
