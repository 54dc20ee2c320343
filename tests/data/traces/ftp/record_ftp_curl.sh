#!/bin/bash
# Record real FTP sessions (pyftpdlib server, curl client) between two network namespaces:
# passive (EPSV, PASV) and active (EPRT, PORT) transfers and listings, over IPv4 and IPv6.
# Offloads are off so every captured packet is one wire packet. Needs root, iproute2,
# ethtool, tcpdump, curl and `pip install pyftpdlib`.
# Usage: bash tests/data/traces/ftp/record_ftp_curl.sh OUT.pcap
set -e
OUT=$1
C=pmftpc$$; S=pmftps$$
cleanup() { [ -n "$SRVPID" ] && kill $SRVPID 2>/dev/null; [ -n "$TDPID" ] && kill $TDPID 2>/dev/null; sleep 0.2; ip netns del $C 2>/dev/null; ip netns del $S 2>/dev/null; }
trap cleanup EXIT
ip netns add $C; ip netns add $S
ip link add vc type veth peer name vs
ip link set vc netns $C; ip link set vs netns $S
for ns in $C $S; do ip netns exec $ns ip link set lo up; done
ip netns exec $C sh -c 'ip addr add 10.77.0.1/24 dev vc; ip -6 addr add fd77::1/64 dev vc nodad; ip link set vc up; ethtool -K vc tso off gso off gro off tx off rx off >/dev/null 2>&1 || true'
ip netns exec $S sh -c 'ip addr add 10.77.0.2/24 dev vs; ip -6 addr add fd77::2/64 dev vs nodad; ip link set vs up; ethtool -K vs tso off gso off gro off tx off rx off >/dev/null 2>&1 || true'
ROOT=$(mktemp -d); head -c 30000 /dev/urandom > $ROOT/file.bin; echo hello > $ROOT/small.txt
ip netns exec $S python3 -c "
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
import logging; logging.basicConfig(level=logging.ERROR)
a = DummyAuthorizer(); a.add_anonymous('$ROOT')
FTPHandler.authorizer = a
FTPHandler.passive_ports = range(60000, 60100)
FTPHandler.permit_foreign_addresses = False
FTPServer(('::', 21), FTPHandler).serve_forever()
" & SRVPID=$!
sleep 1
ip netns exec $C tcpdump -i vc -U -s 0 -w $OUT not arp and not icmp6 2>/dev/null & TDPID=$!
sleep 1
run() { ip netns exec $C curl -s --max-time 10 "$@" -o /dev/null || echo "curl failed: $*"; }
run ftp://10.77.0.2/file.bin                                  # EPSV
run --disable-epsv ftp://10.77.0.2/small.txt                  # PASV (227)
run ftp://10.77.0.2/                                          # LIST over EPSV
run -P 10.77.0.1 ftp://10.77.0.2/file.bin                     # EPRT |1|
run -P 10.77.0.1 --disable-eprt ftp://10.77.0.2/small.txt     # PORT
run -g 'ftp://[fd77::2]/file.bin'                             # EPSV over IPv6
run -g -P fd77::1 'ftp://[fd77::2]/small.txt'                 # EPRT |2|
run -g -P fd77::1 'ftp://[fd77::2]/'                          # LIST, active, IPv6
sleep 1
kill $TDPID; wait $TDPID 2>/dev/null || true; TDPID=
rm -rf $ROOT
