// Package dataplane is the small interface between the gateway's
// reconciler and the backends that program vWire ends (gateway/kernel,
// and later gateway/vpp): whole desired state in, idempotent, and a List of
// what is really programmed, so that diffing and retries live once, in the
// reconciler.
package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultInterface is the name of a vWire's interface in a workload's
// network namespace unless the request names another.
const DefaultInterface = "nsm0"

// End is the desired state of one vWire end on this node: an interface in
// a workload's network namespace with its addresses, routes and MTU, and
// its other half in the gateway's namespace, where tunnels attach.
type End struct {
	// ID is the connection's id; it names and tags everything the end is.
	ID string
	// NetNS is the workload's network namespace: a name (/run/netns/NAME)
	// or a path (/proc/PID/ns/net).
	NetNS string
	// Interface is the interface's name in the workload's namespace.
	Interface string
	Addrs     []netip.Prefix
	Routes    []Route
	MTU       int
	// VXLAN, if set, carries the end's frames to the peer gateway: the
	// workload's interface is then one end of an Ethernet link.
	VXLAN *VXLAN
	// WireGuard, if set, routes the end's packets for the far side's
	// addresses into the WireGuard device of the peer gateway (the
	// gateway keeps one per peer; its allowed IPs are the gateway's to set).
	WireGuard *WireGuard
	// Routed, if set, are the far end's addresses on this same gateway:
	// the gateway routes between the two ends, with no tunnel.
	Routed []netip.Prefix `json:",omitempty"`
	// Bridge, if set, is the id of the end on this same gateway whose
	// bridge the end's gateway half joins: an Ethernet link between two
	// workloads of one gateway, with no tunnel. The endpoint's end names
	// itself and keeps the bridge; the client's end joins it.
	Bridge string `json:",omitempty"`
	// Accept are the route prefixes the workload accepts from the other
	// side: an address or route of the end may overlap the workload's own
	// addresses and routes only inside one of them (never replace one).
	Accept []netip.Prefix `json:",omitempty"`
}

// WireGuard is how an IP end reaches the far end through a peer gateway.
// With Peer set, the backend keeps the device itself (one per peer
// gateway); else Device names one made by the caller.
type WireGuard struct {
	Device string         // the peer gateway's WireGuard device
	Remote []netip.Prefix // the far end's addresses
	// Peer is the peer gateway's public key (base64).
	Peer string `json:",omitempty"`
	// Endpoint is where the peer gateway listens; zero: learnt from its
	// first handshake.
	Endpoint netip.AddrPort `json:",omitzero"`
	// Learnt says Endpoint is where the peer's packets came from (the
	// endpoint's side), not what the peer told: it seeds a new device
	// (after a restart), but never overrides where a live one's peer
	// roamed to.
	Learnt bool `json:",omitempty"`
	// Port is this gateway's listen port for the peer; 0: the kernel's
	// choice (the backend reports it through Tunneler.ListenPort).
	Port int `json:",omitempty"`
}

// Tunneler is implemented by backends that keep WireGuard devices
// themselves: their key, and the port a vWire's device listens on.
type Tunneler interface {
	// PublicKey is the gateway's WireGuard public key (base64).
	PublicKey() string
	// ListenPort is the port of the device that carries end id, or 0.
	ListenPort(id string) int
	// Handshake is when the tunnel that carries end id last completed a
	// WireGuard handshake with its peer (zero: never).
	Handshake(id string) time.Time
	// PeerEndpoint is where the peer of end id's tunnel sends from (zero:
	// not known yet); the backend keeps it, as List reports it.
	PeerEndpoint(id string) netip.AddrPort
}

// VXLAN is a point-to-point VXLAN tunnel between two gateways, one VNI per
// vWire (chosen by the receiving side).
type VXLAN struct {
	VNI    uint32
	Local  netip.Addr // this gateway's tunnel address
	Remote netip.Addr // the peer gateway's
	Port   uint16     // UDP port; 0: VXLANPort
}

// VXLANPort is VXLAN's IANA port, a tunnel's unless it names another.
const VXLANPort = 4789

// WithPort is v with its port stated (VXLANPort for 0), as a backend
// reports it.
func (v VXLAN) WithPort() VXLAN {
	if v.Port == 0 {
		v.Port = VXLANPort
	}
	return v
}

// Route is a route set on the workload's interface.
type Route struct {
	Prefix netip.Prefix
	Via    netip.Addr // zero: directly on the interface
}

// Backend programs vWire ends. Implementations are safe for concurrent use.
type Backend interface {
	// Apply makes the end exist exactly as e says, creating or changing
	// what is needed; applying the same end again changes nothing. On an
	// error, nothing of a new end is left behind.
	Apply(ctx context.Context, e End) error
	// Remove removes everything end id made; a missing end is fine.
	Remove(ctx context.Context, id string) error
	// List reports the ends that are really programmed, by id.
	List(ctx context.Context) ([]End, error)
	// Close releases the backend (not the ends it programmed).
	Close() error
}

// Tunnel names what carries the end: "vxlan-in-wireguard", "vxlan",
// "wireguard", "bridge" (to another end of this gateway) or "veth" (routed
// on this gateway).
func (e End) Tunnel() string {
	switch {
	case e.VXLAN != nil && e.WireGuard != nil:
		return "vxlan-in-wireguard"
	case e.VXLAN != nil:
		return "vxlan"
	case e.WireGuard != nil:
		return "wireguard"
	case e.Bridge != "":
		return "bridge"
	}
	return "veth"
}

// String renders an end as one line, for logs and the fake's text.
func (e End) String() string {
	var addrs, routes []string
	for _, a := range e.Addrs {
		addrs = append(addrs, a.String())
	}
	for _, r := range e.Routes {
		s := r.Prefix.String()
		if r.Via.IsValid() {
			s += " via " + r.Via.String()
		}
		routes = append(routes, s)
	}
	s := fmt.Sprintf("%s netns=%s dev=%s mtu=%d addrs=[%s] routes=[%s]", e.ID, e.NetNS, e.Interface, e.MTU,
		strings.Join(addrs, " "), strings.Join(routes, ", "))
	if v := e.VXLAN; v != nil {
		s += fmt.Sprintf(" vxlan=%d %s->%s:%d", v.VNI, v.Local, v.Remote, v.WithPort().Port)
	}
	if len(e.Routed) > 0 {
		var far []string
		for _, p := range e.Routed {
			far = append(far, p.String())
		}
		s += fmt.Sprintf(" routed=[%s]", strings.Join(far, " "))
	}
	if e.Bridge != "" {
		s += " bridge=" + e.Bridge
	}
	if w := e.WireGuard; w != nil {
		var remote []string
		for _, p := range w.Remote {
			remote = append(remote, p.String())
		}
		if w.Peer != "" {
			endpoint := "learnt"
			if w.Endpoint.IsValid() {
				endpoint = w.Endpoint.String()
			}
			s += fmt.Sprintf(" wireguard=peer:%s@%s port=%d remote=[%s]", w.Peer, endpoint, w.Port, strings.Join(remote, " "))
		} else {
			s += fmt.Sprintf(" wireguard=%s remote=[%s]", w.Device, strings.Join(remote, " "))
		}
	}
	return s
}

// Fake is a Backend that programs nothing and renders its state as text,
// one end a line, sorted by id.
type Fake struct {
	mu   sync.Mutex
	ends map[string]End
	// Fail, when set, is returned by Apply.
	Fail error
	// Key is the fake gateway's public key (base64); empty: a fixed one.
	Key string
	// Unreachable makes every peer gateway silent: no handshake.
	Unreachable bool
	// Learnt is where every peer gateway sends from.
	Learnt netip.AddrPort
}

// NewFake returns an empty fake backend.
func NewFake() *Fake { return &Fake{ends: map[string]End{}} }

// Apply implements Backend.
func (f *Fake) Apply(_ context.Context, e End) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Fail != nil {
		return f.Fail
	}
	if w := e.WireGuard; w != nil && w.Peer != "" && w.Port == 0 {
		w2 := *w
		w2.Port = 51820
		e.WireGuard = &w2
	}
	f.ends[e.ID] = e
	return nil
}

// Remove implements Backend.
func (f *Fake) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ends, id)
	return nil
}

// List implements Backend.
func (f *Fake) List(context.Context) ([]End, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]End, 0, len(f.ends))
	for _, e := range f.ends {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Close implements Backend.
func (f *Fake) Close() error { return nil }

// PublicKey implements Tunneler: a fixed fake key.
func (f *Fake) PublicKey() string {
	if f.Key != "" {
		return f.Key
	}
	return "ZmFrZS1nYXRld2F5LWtleS0wMDAwMDAwMDAwMDAwMDA="
}

// Handshake implements Tunneler: every fake peer answers, unless
// Unreachable.
func (f *Fake) Handshake(string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Unreachable {
		return time.Time{}
	}
	return time.Now()
}

// PeerEndpoint implements Tunneler.
func (f *Fake) PeerEndpoint(string) netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Learnt
}

// ListenPort implements Tunneler.
func (f *Fake) ListenPort(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.ends[id]; ok && e.WireGuard != nil {
		return e.WireGuard.Port
	}
	return 0
}

// String is the fake's state.
func (f *Fake) String() string {
	ends, _ := f.List(context.Background())
	lines := make([]string, len(ends))
	for i, e := range ends {
		lines[i] = e.String()
	}
	return strings.Join(lines, "\n")
}
