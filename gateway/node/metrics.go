package node

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vwire/vwire/internal/metrics"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return metrics.Desc("gateway", name, help, labels...)
}

var (
	vwiresDesc     = desc("vwires", "vWire ends this gateway programs now.")
	reconcileDesc  = desc("reconcile_errors_total", "Data-plane changes (programming, removing or listing vWire ends) that failed, since the start; each is retried.")
	handshakeDesc  = desc("peer_last_handshake_age_seconds", "Time since the WireGuard tunnel to a peer gateway last completed a handshake (absent before the first).", "peer")
	receivedDesc   = desc("peer_received_bytes_total", "Bytes received through the WireGuard tunnel from a peer gateway, since its device was made.", "peer")
	sentDesc       = desc("peer_sent_bytes_total", "Bytes sent through the WireGuard tunnel to a peer gateway, since its device was made.", "peer")
	ifBytesDesc    = desc("interface_bytes", "Bytes through the vWires' interfaces, summed over the ends live now (veth ends; a VXLAN end in a workload's namespace is not counted), by direction.", "direction")
	ifPacketsDesc  = desc("interface_packets", "Packets through the vWires' interfaces, summed as interface_bytes is, by direction.", "direction")
	peerTunnelDesc = desc("peer_tunnels", "WireGuard tunnels to peer gateways, idle ones (kept for --tunnel-grace) too.")
)

// collector reports the gateway's ends, tunnels and interfaces at a
// scrape: a label value per peer gateway (its WireGuard public key), which
// --max-peer-gateways bounds.
type collector struct{ n *Node }

// Collector reports the node's gateway when scraped.
func (n *Node) Collector() prometheus.Collector { return collector{n} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{vwiresDesc, reconcileDesc, handshakeDesc, receivedDesc, sentDesc, ifBytesDesc, ifPacketsDesc, peerTunnelDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	ends, failed := c.n.Reconciled()
	ch <- prometheus.MustNewConstMetric(vwiresDesc, prometheus.GaugeValue, float64(ends))
	ch <- prometheus.MustNewConstMetric(reconcileDesc, prometheus.CounterValue, float64(failed))
	peers := c.n.tunnels.Stats()
	ch <- prometheus.MustNewConstMetric(peerTunnelDesc, prometheus.GaugeValue, float64(len(peers)))
	now := time.Now()
	for _, p := range peers {
		key := p.Key.String()
		if !p.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(handshakeDesc, prometheus.GaugeValue, now.Sub(p.LastHandshake).Seconds(), key)
		}
		ch <- prometheus.MustNewConstMetric(receivedDesc, prometheus.CounterValue, float64(p.Received), key)
		ch <- prometheus.MustNewConstMetric(sentDesc, prometheus.CounterValue, float64(p.Sent), key)
	}
	st, err := c.n.backend.InterfaceStats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(ifBytesDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(ifBytesDesc, prometheus.GaugeValue, float64(st.FromWorkloads), "from_workloads")
	ch <- prometheus.MustNewConstMetric(ifBytesDesc, prometheus.GaugeValue, float64(st.ToWorkloads), "to_workloads")
	ch <- prometheus.MustNewConstMetric(ifPacketsDesc, prometheus.GaugeValue, float64(st.PacketsFromWorkloads), "from_workloads")
	ch <- prometheus.MustNewConstMetric(ifPacketsDesc, prometheus.GaugeValue, float64(st.PacketsToWorkloads), "to_workloads")
}

// Tunnel is the WireGuard tunnel to the peer gateway with public key key
// (ok false: none).
func (n *Node) Tunnel(key []byte) (proxy.TunnelStats, bool) {
	k, err := wgtypes.NewKey(key)
	if err != nil {
		return proxy.TunnelStats{}, false
	}
	p, ok := n.tunnels.Stat(k)
	return proxy.TunnelStats{LastHandshake: p.LastHandshake, Sent: p.Sent, Received: p.Received}, ok
}

// EndCounters are the counters of end id's interface on this gateway (ok
// false: no such end here).
func (n *Node) EndCounters(id string) (*proxypb.InterfaceCounters, bool) {
	st, ok, err := n.backend.EndStats(id)
	if err != nil || !ok {
		return nil, false
	}
	return &proxypb.InterfaceCounters{FromWorkloadBytes: st.FromWorkloads, ToWorkloadBytes: st.ToWorkloads,
		FromWorkloadPackets: st.PacketsFromWorkloads, ToWorkloadPackets: st.PacketsToWorkloads}, true
}
