#!/bin/sh
# keepalived notify script for pmct: the VRRP state decides the pmct role.
#
#   notify_master "/etc/keepalived/pmct-notify.sh master /run/pmct/fw-a"
#   notify_backup "/etc/keepalived/pmct-notify.sh backup /run/pmct/fw-a"
#   notify_fault  "/etc/keepalived/pmct-notify.sh fault /run/pmct/fw-a"
#   notify_stop   "/etc/keepalived/pmct-notify.sh stop /run/pmct/fw-a"
#
# MASTER -> `pmct promote`; BACKUP, FAULT and STOP -> `pmct demote`, or, if no daemon answers
# (it died), the fence: `nft -f RUN_DIR/fence.nft` silences the data interfaces. The second
# argument is the node's run_dir (node.run_dir in its pmct config; it holds control.sock).
#
# Order: keepalived starts one script per transition and does not wait for it, so two quick
# transitions (MASTER then BACKUP) run concurrently and could finish in the wrong order,
# leaving pmct active while VRRP says backup. The scripts therefore take a lock and act only
# if no later transition has acted already: keepalived forks them in transition order, so a
# later transition's script has a later pid (with wrap-around) under the same keepalived
# process ($PPID).
#
# Environment:
#   PMCT             the pmct command (default "pmct"; split on blanks: "/path/python -m pmct")
#   PMCT_NOTIFY_VIA  "cli" (default): run `pmct promote|demote`; "file": write 1 or 0 into the
#                    daemon's state file RUN_DIR/role instead (no Python start-up, about
#                    0.2 s sooner; the daemon reads the file every 0.1 s)
#   PMCT_NOTIFY_LOG  if set, one line per call is appended to this file: "<unix time at start>
#                    <state> <action> <exit status> <unix time at end>" (the lab and the
#                    failover benchmark read it); action "skipped" for an overtaken transition
set -u
t_start=$(date +%s.%N)

state=${1:?usage: pmct-notify.sh master|backup|fault|stop [RUN_DIR]}
run_dir=${2:-/run/pmct}
pmct=${PMCT:-pmct}

case $state in
    master | MASTER) action=promote ;;
    backup | BACKUP | fault | FAULT | stop | STOP) action=demote ;;
    *)
        echo "pmct-notify.sh: unknown state '$state'" >&2
        exit 2
        ;;
esac

say() {
    if [ -n "${PMCT_NOTIFY_LOG:-}" ]; then
        echo "$t_start $state $* $(date +%s.%N)" >>"$PMCT_NOTIFY_LOG"
    fi
    if command -v logger >/dev/null 2>&1; then
        logger -t pmct-notify "$state: $*" 2>/dev/null || true
    fi
}

# Serialise, and skip a transition that a later one has overtaken.
exec 9>>"$run_dir/keepalived-notify.lock" || exit 1
flock 9
last_file=$run_dir/keepalived-notify.last
me=$$
if [ -r "$last_file" ] && read -r last_ppid last_pid <"$last_file" && [ "$last_ppid" = "$PPID" ]; then
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 4194304)
    ahead=$(((me - last_pid + pid_max) % pid_max))
    if [ "$ahead" -eq 0 ] || [ "$ahead" -ge $((pid_max / 2)) ]; then
        say "skipped -"
        exit 0
    fi
fi
echo "$PPID $me" >"$last_file"

if [ "${PMCT_NOTIFY_VIA:-cli}" = file ]; then
    # the state file contract (pmct/node/forwarding.py): 1 = promote, 0 = demote
    if [ "$action" = promote ]; then word=1; else word=0; fi
    if [ -f "$run_dir/role" ]; then
        echo "$word" >"$run_dir/role"
        rc=$?
    else
        rc=1 # no daemon (it creates the file at start)
    fi
else
    # shellcheck disable=SC2086  # PMCT may be a command with arguments
    $pmct "$action" --socket "$run_dir/control.sock" >/dev/null 2>&1
    rc=$?
fi
# A demote that finds no daemon: the daemon died. With fail = "open" its queue rules still
# bypass to the kernel, which would go on forwarding unfiltered next to the new master, so
# silence the data interfaces with the batch the daemon left for this (pmct/node/fence.py).
if [ "$rc" -ne 0 ] && [ "$action" = demote ] && [ -f "$run_dir/fence.nft" ]; then
    if nft -f "$run_dir/fence.nft" 2>/dev/null; then
        action=fence
        rc=0
    fi
fi
say "$action $rc"
exit $rc
