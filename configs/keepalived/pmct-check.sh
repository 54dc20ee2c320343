#!/bin/sh
# keepalived vrrp_script for pmct: succeeds only while the local pmct daemon is ready.
#
#   vrrp_script pmct_ready {
#       script "/etc/keepalived/pmct-check.sh /run/pmct/fw-a"
#       ...
#       init_fail
#   }
#
# `pmct status --ready` exits 0 only when the daemon answers and says it is ready; it says
# no while it is starting and while it is still in its initial sync, and there is no answer
# at all when it is not running. A failing check puts the VRRP instance in FAULT, so a node
# whose pmct is not ready can never become master (and a master whose pmct dies hands over).
# The argument is the node's run_dir (it holds control.sock). PMCT as in pmct-notify.sh.
set -u
run_dir=${1:-/run/pmct}
# shellcheck disable=SC2086  # PMCT may be a command with arguments
exec ${PMCT:-pmct} status --ready --socket "$run_dir/control.sock"
