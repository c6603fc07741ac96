package kernel

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Tunnels keeps this gateway's WireGuard devices: one per peer gateway,
// created when a vWire first needs it, its peer's allowed IPs the far
// addresses of every vWire through it, and removed Grace after the last
// one goes (unless a new vWire takes it again: then the vWire needs a peer
// route only, not a device and a handshake). A device listens on a port
// of its own (the kernel's choice), which the vWire's mechanism tells the
// peer; a peer whose endpoint is not known yet
// is learnt from its first handshake (WireGuard roaming).
type Tunnels struct {
	key wgtypes.Key
	mtu int
	log *slog.Logger
	// Max bounds the devices, one per peer gateway key that a vWire
	// names (a peer domain chooses the keys): 0 is DefaultMaxPeers.
	Max int
	// Grace is how long a device outlives its last vWire: 0 removes it
	// with the last.
	Grace time.Duration

	mu    sync.Mutex
	peers map[wgtypes.Key]*tunnel
}

type tunnel struct {
	dev      *WireGuard
	endpoint netip.AddrPort
	told     bool                      // endpoint is what the peer told, not learnt
	users    map[string][]netip.Prefix // vWire id → its far addresses
	idle     *time.Timer               // while no vWire uses it: removes it when it fires
	since    time.Time                 // when it went idle
	port     int                       // the device's UDP port, as it was made (read once: reading it lists every peer's allowed IPs)
}

// configured is the endpoint to configure the peer with: what the peer
// told; a learnt one only for a new device (fresh), for WireGuard follows
// a live peer's packets itself.
func (tun *tunnel) configured(fresh bool) netip.AddrPort {
	if tun.told || fresh {
		return tun.endpoint
	}
	return netip.AddrPort{}
}

// DefaultMaxPeers is how many peer gateways a gateway keeps tunnels to
// unless told otherwise: each is a device, a socket and, with wireguard-go,
// goroutines and buffers (some hundreds of KB).
const DefaultMaxPeers = 256

// DefaultGrace is how long a gateway keeps a WireGuard device to a peer
// gateway after its last vWire closed unless told otherwise: long enough
// for the next vWire of a busy pair to find it (and its session) there,
// short enough that a pair that is done leaves no device for long.
const DefaultGrace = 30 * time.Second

// NewTunnels returns the tunnels of a gateway with private key key; their
// devices get mtu.
func NewTunnels(key wgtypes.Key, mtu int, log *slog.Logger) *Tunnels {
	return &Tunnels{key: key, mtu: mtu, log: log, peers: map[wgtypes.Key]*tunnel{}}
}

// PublicKey is this gateway's public key.
func (t *Tunnels) PublicKey() wgtypes.Key { return t.key.PublicKey() }

// deviceName is unique on the machine for this gateway and peer: control
// sockets in /var/run/wireguard are shared by every namespace.
func (t *Tunnels) deviceName(peer wgtypes.Key) string {
	local := t.key.PublicKey()
	sum := sha256.Sum256(append(local[:], peer[:]...))
	return "wg" + hex.EncodeToString(sum[:6])
}

// Use makes vWire id reach far through the peer gateway with key peer, at
// endpoint (zero if not known yet: learnt when the peer connects; learnt:
// where the peer's packets came from before, which only a new device
// takes). It returns the device to route the vWire into and the port it
// listens on. A new device listens on listen (0: any), as after a restart,
// where the peer still sends to the port it was told.
func (t *Tunnels) Use(id string, peer wgtypes.Key, endpoint netip.AddrPort, learnt bool, far []netip.Prefix, listen int) (device string, port int, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tun := t.peers[peer]
	fresh := tun == nil
	if max := cmp.Or(t.Max, DefaultMaxPeers); fresh && len(t.peers) >= max && !t.dropIdlestLocked() {
		return "", 0, fmt.Errorf("this gateway keeps tunnels to %d peer gateways already, its most (--max-peer-gateways): refused a tunnel to another", max)
	}
	if tun != nil && tun.idle != nil {
		tun.idle.Stop()
		tun.idle = nil
	}
	if fresh {
		dev, err := NewWireGuard(t.deviceName(peer), t.key, listen, t.mtu, t.log)
		if err != nil && listen != 0 {
			t.log.Warn("the WireGuard port of before is taken; the peer learns the new one from the next handshake", "port", listen, "err", err)
			dev, err = NewWireGuard(t.deviceName(peer), t.key, 0, t.mtu, t.log)
		}
		if err != nil {
			return "", 0, err
		}
		tun = &tunnel{dev: dev, users: map[string][]netip.Prefix{}}
		t.peers[peer] = tun
	}
	whole := fresh // the peer's allowed IPs are to be set whole, not added to
	switch {
	case endpoint.IsValid() && !learnt:
		if tun.told && endpoint != tun.endpoint {
			// The peer gateway answers from another port: its device for
			// us is new (its last vWire to us closed while ours stayed),
			// and the session this side holds is one it no longer knows.
			// Drop it, so that traffic waits for a new handshake (which
			// the caller waits for) rather than for WireGuard to notice,
			// seconds later.
			if err := tun.dev.RemovePeer(peer); err != nil {
				return "", 0, err
			}
			whole = true
		}
		tun.endpoint, tun.told = endpoint, true
	case endpoint.IsValid() && !tun.told: // learnt: never over what the peer told
		tun.endpoint = endpoint
	}
	prev, had := tun.users[id]
	tun.users[id] = far
	set := tun.dev.AddAllowed
	// A refresh with the same far addresses adds them again (a replace
	// would leave the peer allowed nothing for a moment: a packet lost).
	if whole || (had && !slices.Equal(prev, far)) {
		set = tun.dev.SetPeer
		far = allowed(tun.users)
	}
	if err := set(peer, tun.configured(fresh), far); err != nil {
		if had {
			tun.users[id] = prev
		} else {
			delete(tun.users, id)
		}
		t.dropIfUnused(peer, tun)
		return "", 0, err
	}
	if tun.port == 0 {
		if tun.port, err = tun.dev.Port(); err != nil {
			return "", 0, fmt.Errorf("port of %s: %w", tun.dev.Name, err)
		}
	}
	return tun.dev.Name, tun.port, nil
}

// carrierLocked is the peer key and the tunnel that carry vWire id (nil:
// none); t.mu is held.
func (t *Tunnels) carrierLocked(id string) (wgtypes.Key, *tunnel) {
	for key, tun := range t.peers {
		if _, ok := tun.users[id]; ok {
			return key, tun
		}
	}
	return wgtypes.Key{}, nil
}

// Ethernet is the TUN device the VXLAN packets of Ethernet vWire id go
// into (see WireGuard.Ethernet): "" for its tunnel's device itself.
func (t *Tunnels) Ethernet(id string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, tun := t.carrierLocked(id); tun != nil {
		return tun.dev.Ethernet()
	}
	return "", fmt.Errorf("no tunnel carries vWire %q", id)
}

// ListenPort is the port of the device that carries vWire id, or 0.
func (t *Tunnels) ListenPort(id string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, tun := t.carrierLocked(id); tun != nil {
		if tun.port == 0 {
			tun.port, _ = tun.dev.Port()
		}
		return tun.port
	}
	return 0
}

// Handshake is when the tunnel that carries vWire id last completed a
// handshake with its peer (zero: never, or no such tunnel).
func (t *Tunnels) Handshake(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	if key, tun := t.carrierLocked(id); tun != nil {
		at, _ := tun.dev.LastHandshake(key)
		return at
	}
	return time.Time{}
}

// PeerEndpoint is where the peer of the tunnel that carries vWire id
// sends from, as WireGuard learnt it (zero: not known). The tunnel keeps
// it as learnt (what a device made anew is told, and what List reports)
// unless the peer told its own.
func (t *Tunnels) PeerEndpoint(id string) netip.AddrPort {
	t.mu.Lock()
	defer t.mu.Unlock()
	if key, tun := t.carrierLocked(id); tun != nil {
		at, _ := tun.dev.PeerEndpoint(key)
		if at.IsValid() && !tun.told {
			tun.endpoint = at
		}
		return at
	}
	return netip.AddrPort{}
}

// peerOf is the peer key and endpoint of the tunnel that carries vWire id,
// and whether the endpoint was learnt.
func (t *Tunnels) peerOf(id string) (key wgtypes.Key, endpoint netip.AddrPort, learnt, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if key, tun := t.carrierLocked(id); tun != nil {
		return key, tun.endpoint, tun.endpoint.IsValid() && !tun.told, true
	}
	return wgtypes.Key{}, netip.AddrPort{}, false, false
}

// farOf is what vWire id reaches through its tunnel (nil: no tunnel).
func (t *Tunnels) farOf(id string) []netip.Prefix {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, tun := t.carrierLocked(id); tun != nil {
		return slices.Clone(tun.users[id])
	}
	return nil
}

// Release drops vWire id from whichever tunnel carries it; a tunnel that no
// vWire uses any more is removed Grace later, unless a vWire takes it
// again meanwhile.
func (t *Tunnels) Release(id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for peer, tun := range t.peers {
		far, ok := tun.users[id]
		if !ok {
			continue
		}
		delete(tun.users, id)
		if len(tun.users) == 0 {
			// A tunnel that never had a session (its peer never answered)
			// saves the next vWire nothing: it goes at once. (Asked only
			// of the last vWire: the device's whole state is read.)
			if at, _ := tun.dev.LastHandshake(peer); t.Grace <= 0 || at.IsZero() {
				t.dropIfUnused(peer, tun)
				return nil
			}
		}
		// What no other vWire through the tunnel reaches is allowed no
		// more: idle, the peer keeps its session but is allowed nothing,
		// and no packet of a closed vWire goes through.
		kept := map[netip.Prefix]bool{}
		for _, other := range tun.users {
			for _, p := range other {
				kept[p] = true
			}
		}
		var gone []netip.Prefix
		for _, p := range far {
			if !kept[p] {
				gone = append(gone, p)
			}
		}
		if err := tun.dev.RemoveAllowed(peer, gone, func() []netip.Prefix { return allowed(tun.users) }); err != nil {
			return err
		}
		if len(tun.users) == 0 {
			t.idleLocked(peer, tun)
		}
		return nil
	}
	return nil
}

// idleLocked removes tunnel tun to peer Grace from now unless a vWire
// takes it first; t.mu is held.
func (t *Tunnels) idleLocked(peer wgtypes.Key, tun *tunnel) {
	var timer *time.Timer
	timer = time.AfterFunc(t.Grace, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.peers[peer] == tun && tun.idle == timer { // not taken (and let go) again meanwhile
			t.dropIfUnused(peer, tun)
		}
	})
	tun.idle, tun.since = timer, time.Now()
}

// dropIdlestLocked removes the tunnel idle the longest, to make room for
// a new one; false if every tunnel carries a vWire. t.mu is held.
func (t *Tunnels) dropIdlestLocked() bool {
	var peer wgtypes.Key
	var idlest *tunnel
	for key, tun := range t.peers {
		if tun.idle != nil && (idlest == nil || tun.since.Before(idlest.since)) {
			peer, idlest = key, tun
		}
	}
	if idlest == nil {
		return false
	}
	return t.dropIfUnused(peer, idlest)
}

func (t *Tunnels) dropIfUnused(peer wgtypes.Key, tun *tunnel) bool {
	if len(tun.users) > 0 {
		return false
	}
	t.dropLocked(peer, tun)
	return true
}

// dropLocked removes tunnel tun to peer, its device and its idle timer;
// t.mu is held.
func (t *Tunnels) dropLocked(peer wgtypes.Key, tun *tunnel) {
	if tun.idle != nil {
		tun.idle.Stop()
	}
	tun.dev.Close()
	delete(t.peers, peer)
}

// Devices lists the devices, by name, idle ones too.
func (t *Tunnels) Devices() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, tun := range t.peers {
		out = append(out, tun.dev.Name)
	}
	sort.Strings(out)
	return out
}

// Close removes every device, idle ones too.
func (t *Tunnels) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for peer, tun := range t.peers {
		t.dropLocked(peer, tun)
	}
}

// allowed is the union of the vWires' far addresses.
func allowed(users map[string][]netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, far := range users {
		for _, p := range far {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
