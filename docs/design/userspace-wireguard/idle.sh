#!/bin/bash
# 200 idle devices (each with one peer, endpoint set, no traffic) in one process,
# inside a scratch netns. usage: idle.sh bt|gt [n] [workers] [secs]
set -u
IMPL=$1; N=${2:-200}; W=${3:-2}; SECS=${4:-20}
BIN=/work/scratch-gotatun/target/release/wgbench
trap 'ip netns del wgb-idle 2>/dev/null' EXIT INT TERM
ip netns del wgb-idle 2>/dev/null; ip netns add wgb-idle; ip -n wgb-idle link set lo up
case $IMPL in
  bt) ip netns exec wgb-idle $BIN idle-bt $N $SECS ;;
  gt) ip netns exec wgb-idle $BIN idle-gt $N $W $SECS ;;
esac
