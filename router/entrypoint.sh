#!/bin/bash
# Edge router start: wait for containerlab to plug in every link, drop Docker's default
# route (the edge blackholes what is not lab space; see frr.conf), then run FRR.
set -u
want=${CLAB_INTFS:-0}
for _ in $(seq 1 1500); do
  have=$(ls /sys/class/net | grep -c '^eth[1-9][0-9]*$')
  [ "$have" -ge "$want" ] && break
  sleep 0.2
done
echo "muxlab-router: $have of $want lab interfaces present"
ip route del default 2>/dev/null || true
# containerlab switches TX checksum offload (and so segmentation) off on every veth: switch
# back on what the kernel allows, at start and for any link re-plugged later (a new ifindex).
# UDP GRO forwarding and threaded NAPI let a burst of datagrams cross the lab as one packet
# (muxlab/node/offloads.py says why; /sys is read-only here, writable in a private mount ns).
offloads() {
  for i in $(ls /sys/class/net | grep '^eth[1-9][0-9]*$'); do
    ethtool -K "$i" tx on sg on tso on gso on gro on rx-udp-gro-forwarding on >/dev/null 2>&1
    unshare --mount sh -c "mount -o remount,rw /sys && echo 1 > /sys/class/net/$i/threaded" 2>/dev/null
  done
}
offloads && echo "muxlab-router: offloads switched on"
(last=""; while sleep 2; do
   now=$(cat /sys/class/net/eth[1-9]*/ifindex 2>/dev/null | tr '\n' ' ')
   [ "$now" != "$last" ] && offloads && last=$now
 done) &
# ingress filtering of the internet ports (rendered from the lab model)
[ -f /etc/muxlab/edge.nft ] && nft -f /etc/muxlab/edge.nft && echo "muxlab-router: loaded edge.nft"
mkdir -p /var/log/frr /var/run/frr && chown frr:frr /var/log/frr /var/run/frr
touch /var/log/frr/frr.log && chown frr:frr /var/log/frr/frr.log
/usr/lib/frr/frrinit.sh start
# Under a heavy start (hundreds of containers deploying at once) watchfrr's "restart all"
# can be killed after 20 s before vtysh loaded frr.conf: the daemons then run without any
# configuration ("BGP instance not found"). Load it again until bgpd has its instance.
for _ in $(seq 1 60); do
  vtysh -c 'show running-config' 2>/dev/null | grep -q '^router bgp' && break
  echo "muxlab-router: FRR runs without its configuration; loading frr.conf again"
  vtysh -b >/dev/null 2>&1
  sleep 2
done
trap '/usr/lib/frr/frrinit.sh stop; exit 0' TERM INT
tail -n +1 -F /var/log/frr/frr.log &
wait
