#!/bin/bash
# Throughput/RTT of one WireGuard tunnel between two "nodes" (netns wgb-na,
# wgb-nb, joined by a veth); each device's UDP socket lives in its node netns,
# its TUN link is moved into an "app" netns (wgb-aa, wgb-ab) as Weft does.
# usage: bench.sh bt|gt|gt1|wggo [iperf_secs]
set -u
IMPL=$1
SECS=${2:-5}
BIN=${BIN:-/work/scratch-gotatun/target/release/wgbench}
OUT=/work/scratch-gotatun/results
mkdir -p $OUT
NS="wgb-na wgb-nb wgb-aa wgb-ab"
PIDS=""
cleanup() {
  for p in $PIDS; do kill $p 2>/dev/null; done
  sleep 0.5
  for p in $PIDS; do kill -9 $p 2>/dev/null; done
  for n in $NS; do ip netns del $n 2>/dev/null; done
  rm -f /var/run/wireguard/wgbA.sock /var/run/wireguard/wgbB.sock
}
trap cleanup EXIT INT TERM
cleanup; PIDS=""

for n in $NS; do ip netns add $n; ip -n $n link set lo up; done
ip link add wgb-va netns wgb-na type veth peer name wgb-vb netns wgb-nb
ip -n wgb-na addr add 10.55.0.1/24 dev wgb-va; ip -n wgb-na link set wgb-va up
ip -n wgb-nb addr add 10.55.0.2/24 dev wgb-vb; ip -n wgb-nb link set wgb-vb up

KA=$(head -c32 /dev/urandom | xxd -p -c32); KB=$(head -c32 /dev/urandom | xxd -p -c32)
PA=$($BIN pub $KA); PB=$($BIN pub $KB)
b64() { echo -n $1 | xxd -r -p | base64; }

start() { # side node app ifname myport key peerpub endpoint allowed
  local node=$2 ifn=$4
  case $IMPL in
    bt|gt|gt1)
      local sub=${IMPL%1}; local extra=""; [ "$IMPL" = gt1 ] && extra=1
      ip netns exec $node $BIN $sub $ifn $5 $6 $7 $8 $9 $extra > $OUT/$IMPL-$1.log 2>&1 &
      local pid=$!; PIDS="$PIDS $pid"
      for i in $(seq 50); do grep -q READY $OUT/$IMPL-$1.log && break; sleep 0.1; done
      ;;
    gtw)  # process in the root netns; UDP bound in node ns, TUN created in app ns
      $BIN gtw /run/netns/$node /run/netns/$3 $ifn $5 $6 $7 $8 $9 > $OUT/$IMPL-$1.log 2>&1 &
      local pid=$!; PIDS="$PIDS $pid"
      for i in $(seq 50); do grep -q READY $OUT/$IMPL-$1.log && break; sleep 0.1; done
      ;;
    wggo)
      ip netns exec $node wireguard-go -f $ifn > $OUT/$IMPL-$1.log 2>&1 &
      local pid=$!; PIDS="$PIDS $pid"
      for i in $(seq 50); do [ -S /var/run/wireguard/$ifn.sock ] && break; sleep 0.1; done
      ip netns exec $node wg set $ifn private-key <(b64 $6) listen-port $5 \
        peer $(b64 $7) endpoint $8 allowed-ips $9
      ;;
  esac
  echo $pid > $OUT/pid-$1
}
start A wgb-na wgb-aa wgbA 51820 $KA $PB 10.55.0.2:51821 10.77.0.2/32
start B wgb-nb wgb-ab wgbB 51821 $KB $PA 10.55.0.1:51820 10.77.0.1/32
PIDA=$(cat $OUT/pid-A); PIDB=$(cat $OUT/pid-B)
if [ -n "${SOCKBUF:-}" ]; then for p in $PIDA $PIDB; do /work/scratch-gotatun/bufs.py $p $SOCKBUF; done; fi
for s in "A wgb-na wgb-aa 10.77.0.1" "B wgb-nb wgb-ab 10.77.0.2"; do
  set -- $s; ifn=wgb$1
  [ $IMPL = gtw ] || ip -n $2 link set $ifn netns $3 || { echo "move failed"; exit 1; }
  ip -n $3 link set $ifn mtu 1420
  ip -n $3 addr add $4/24 dev $ifn
  ip -n $3 link set $ifn up
done
ps -o nlwp= -p $PIDA | sed "s/^/$IMPL threads per device process: /"

ip netns exec wgb-aa ping -c 3 -i 0.2 -W 2 10.77.0.2 > /dev/null || echo "warm-up ping failed"
PING=$(ip netns exec wgb-aa ping -c 20 -i 0.2 -W 2 10.77.0.2 | tail -1)
echo "$IMPL ping: $PING"

ip netns exec wgb-ab iperf3 -s -1 > /dev/null 2>&1 &
PIDS="$PIDS $!"
sleep 0.5
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
CA0=$(cpu $PIDA); CB0=$(cpu $PIDB)
ip netns exec wgb-aa iperf3 -c 10.77.0.2 -t $SECS -J > $OUT/$IMPL-iperf.json
CA1=$(cpu $PIDA); CB1=$(cpu $PIDB)
MBPS=$(jq '.end.sum_received.bits_per_second/1e6' $OUT/$IMPL-iperf.json)
BYTES=$(jq '.end.sum_received.bytes' $OUT/$IMPL-iperf.json)
RETR=$(jq '.end.sum_sent.retransmits' $OUT/$IMPL-iperf.json)
TCK=$(getconf CLK_TCK)
python3 - <<EOF
mbps=$MBPS; gbit=$BYTES*8/1e9
ca=($CA1-$CA0)/$TCK; cb=($CB1-$CB0)/$TCK
print(f"$IMPL iperf3 TCP ${SECS}s: {mbps:.0f} Mbit/s, retr=$RETR; device CPU: sender {ca:.2f}s receiver {cb:.2f}s => {(ca+cb)/gbit:.2f} CPU-s/Gbit")
EOF
for p in $PIDA $PIDB; do grep -E "VmRSS|VmHWM" /proc/$p/status | tr -s ' \n' ' '; done | sed "s/^/$IMPL device RSS after load (A then B): /"; echo
if [ -n "${DIAG:-}" ]; then
  ip -n wgb-ab -d link show wgbB | grep -o "tun type.*"
  ip netns exec wgb-nb nstat -az UdpRcvbufErrors UdpInErrors UdpInDatagrams Udp6RcvbufErrors | tail -n +2
  ip netns exec wgb-na nstat -az UdpSndbufErrors UdpOutDatagrams | tail -n +2
  ip -n wgb-ab -s link show wgbB | sed -n 3,6p
  ip netns exec wgb-ab nstat -az TcpExtTCPBacklogDrop IpInDiscards TcpExtTCPOFOQueue | tail -n +2
fi
grep -iE "error|panic" $OUT/$IMPL-A.log $OUT/$IMPL-B.log | head -5
[ $IMPL = gtw ] && [ -n "${GT_UAPI:-}" ] && { echo "--- wg show wgbA (gotatun UAPI):"; wg show wgbA; wg show wgbA dump | head -3;
  echo "--- wg set (update keepalive of the existing peer), then latest-handshakes/transfer:"; wg show wgbA latest-handshakes
  wg set wgbA peer $(b64 $PB) persistent-keepalive 25; wg show wgbA latest-handshakes; wg show wgbA transfer; }
[ $IMPL = gtw ] && { tail -1 $OUT/$IMPL-A.log; ip netns exec wgb-na ss -uanp | grep wgbench; ip -n wgb-aa link show wgbA | head -1; }
