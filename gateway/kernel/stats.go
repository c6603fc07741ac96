package kernel

import (
	"sort"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PeerStats is a tunnel to one peer gateway as WireGuard sees it.
type PeerStats struct {
	Key           wgtypes.Key
	Device        string
	LastHandshake time.Time // zero: none yet
	Received      int64     // bytes
	Sent          int64
}

// Stats reports the tunnel to each peer gateway, idle ones too.
func (t *Tunnels) Stats() []PeerStats {
	t.mu.Lock()
	devs := make(map[wgtypes.Key]*WireGuard, len(t.peers))
	for key, tun := range t.peers {
		devs[key] = tun.dev
	}
	t.mu.Unlock()
	// Asked outside the lock: a device a vWire's change drops meanwhile
	// answers nothing and is left out.
	out := make([]PeerStats, 0, len(devs))
	for key, dev := range devs {
		if st, ok := stat(key, dev); ok {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// Stat reports the tunnel to the peer gateway with key peer (ok false:
// none), asking its device only.
func (t *Tunnels) Stat(peer wgtypes.Key) (PeerStats, bool) {
	t.mu.Lock()
	tun := t.peers[peer]
	t.mu.Unlock()
	if tun == nil {
		return PeerStats{}, false
	}
	return stat(peer, tun.dev)
}

func stat(key wgtypes.Key, dev *WireGuard) (PeerStats, bool) {
	p, err := dev.Peer(key)
	if err != nil {
		return PeerStats{}, false
	}
	return PeerStats{Key: key, Device: dev.Name, LastHandshake: p.LastHandshakeTime, Received: p.ReceiveBytes, Sent: p.TransmitBytes}, true
}

// InterfaceStats is what the vWires' interfaces carried, summed over
// the ends programmed now: their veths' halves in the gateway's namespace,
// so that what the workloads sent is what those received. A VXLAN end
// (its device in the workload's namespace, bridged or not) has no half
// here: it counts in Ends, not in the bytes and packets.
type InterfaceStats struct {
	Ends                                     int
	FromWorkloads, ToWorkloads               uint64 // bytes
	PacketsFromWorkloads, PacketsToWorkloads uint64
}

// InterfaceStats sums the counters of the gateway-side links of the ends
// programmed now, with one link dump.
func (b *Backend) InterfaceStats() (InterfaceStats, error) {
	h, err := b.ownHandle()
	if err != nil {
		return InterfaceStats{}, err
	}
	defer h.Close()
	links, err := dump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		return InterfaceStats{}, err
	}
	var st InterfaceStats
	for _, l := range links {
		if _, _, ok := parseHostAlias(l.Attrs().Alias); ok {
			st.add(l)
		}
	}
	return st, nil
}

// EndStats is InterfaceStats of end id alone (ok false: no such end).
func (b *Backend) EndStats(id string) (st InterfaceStats, ok bool, err error) {
	h, err := b.ownHandle()
	if err != nil {
		return st, false, err
	}
	defer h.Close()
	l, err := h.LinkByName(hostName(id))
	if err != nil {
		return st, false, nil
	}
	if got, _, mine := parseHostAlias(l.Attrs().Alias); !mine || got != id {
		return st, false, nil
	}
	st.add(l)
	return st, true, nil
}

// add counts gateway-side link l of an end.
func (st *InterfaceStats) add(l netlink.Link) {
	a := l.Attrs()
	if st.Ends++; isTag(l) || a.Statistics == nil {
		return
	}
	st.FromWorkloads += a.Statistics.RxBytes
	st.ToWorkloads += a.Statistics.TxBytes
	st.PacketsFromWorkloads += a.Statistics.RxPackets
	st.PacketsToWorkloads += a.Statistics.TxPackets
}
