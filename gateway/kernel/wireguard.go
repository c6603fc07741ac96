package kernel

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WireGuard is one WireGuard device: the kernel's where the module exists,
// else upstream wireguard-go embedded in this process with a TUN device
// (its control socket in /var/run/wireguard is shared by every namespace,
// so names must be unique on the machine). Either way it is configured
// through wgctrl. The gateway keeps one per peer gateway; each vWire adds
// its addresses to the peer's allowed IPs.
type WireGuard struct {
	Name      string
	Userspace bool // embedded wireguard-go

	dev  *device.Device
	eth  *ethernetTUN // wireguard-go's TUN, with Ethernet devices once a vWire needs them
	bind *nsBind      // nil: the process's namespace
	uapi net.Listener
	link netlink.Link
	wg   *wgctrl.Client
}

// NewWireGuard creates the device name with the private key, listening on
// port (0: any), and brings it up at mtu.
func NewWireGuard(name string, key wgtypes.Key, port, mtu int, log *slog.Logger) (w *WireGuard, err error) {
	if len(name) > 15 {
		return nil, fmt.Errorf("WireGuard device name %q is longer than 15 characters", name)
	}
	dev := &WireGuard{Name: name}
	defer func() {
		if err != nil {
			dev.Close() // not w: a failed return sets it to nil
		}
	}()
	w = dev
	if w.wg, err = wgctrl.New(); err != nil {
		return nil, fmt.Errorf("wgctrl: %w", err)
	}
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}
	switch err := netlink.LinkAdd(link); {
	case err == nil:
		w.link = link
	case errors.Is(err, errNotSupported) || strings.Contains(err.Error(), "not supported"):
		if err := w.startUserspace(mtu, log); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("creating WireGuard device %s: %w", name, err)
	}
	if w.Userspace {
		// Up bound a port of the kernel's choice; a port asked for binds
		// again (it is what a restart asks for; a new device takes any).
		conf := "private_key=" + hex.EncodeToString(key[:]) + "\n"
		if port != 0 {
			conf += fmt.Sprintf("listen_port=%d\n", port)
		}
		err = w.dev.IpcSet(conf)
	} else {
		err = w.wg.ConfigureDevice(name, wgtypes.Config{PrivateKey: &key, ListenPort: &port})
	}
	if err != nil {
		return nil, fmt.Errorf("configuring %s: %w", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	return w, nil
}

// Keepalive is the persistent keepalive of a peer whose endpoint is known.
const Keepalive = 5 * time.Second

// errNotSupported is what the kernel answers without the module.
var errNotSupported = errors.New("operation not supported")

// startUserspace runs wireguard-go for the device, with its control
// socket, and brings it up.
func (w *WireGuard) startUserspace(mtu int, log *slog.Logger) error {
	t, err := tun.CreateTUN(w.Name, mtu)
	if err != nil {
		return fmt.Errorf("TUN %s for wireguard-go: %w", w.Name, err)
	}
	if eth, err := newEthernetTUN(t); err == nil {
		t, w.eth = eth, eth
	} else {
		log.Warn("Ethernet vWires through this tunnel are cut into packets by the kernel, a packet a read (slower)", "device", w.Name, "err", err)
	}
	logger := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf:   func(f string, a ...any) { log.Warn("wireguard-go: "+fmt.Sprintf(f, a...), "device", w.Name) },
	}
	bind, err := bindHere()
	if err != nil {
		t.Close()
		return err
	}
	w.dev = device.NewDevice(t, bind, logger)
	w.bind, _ = bind.(*nsBind)
	w.Userspace = true
	file, err := ipc.UAPIOpen(w.Name)
	if err != nil {
		return fmt.Errorf("wireguard-go control socket for %s: %w", w.Name, err)
	}
	if w.uapi, err = ipc.UAPIListen(w.Name, file); err != nil {
		return fmt.Errorf("wireguard-go control socket for %s: %w", w.Name, err)
	}
	go func() {
		for {
			c, err := w.uapi.Accept()
			if err != nil {
				return
			}
			go w.dev.IpcHandle(c)
		}
	}()
	return w.dev.Up()
}

// Ethernet is the TUN device Ethernet vWires' VXLAN packets are routed
// into, made with the first: "" where the device has none (the kernel's
// WireGuard, or wireguard-go without the wrapper: the device itself then).
func (w *WireGuard) Ethernet() (string, error) {
	if w.eth == nil {
		return "", nil
	}
	return w.eth.Ethernet(w.Name)
}

// PublicKey is the device's public key.
func (w *WireGuard) PublicKey() (wgtypes.Key, error) {
	d, err := w.wg.Device(w.Name)
	if err != nil {
		return wgtypes.Key{}, err
	}
	return d.PublicKey, nil
}

// Port is the UDP port the device listens on.
func (w *WireGuard) Port() (int, error) {
	d, err := w.wg.Device(w.Name)
	if err != nil {
		return 0, err
	}
	return d.ListenPort, nil
}

// SetPeer makes the peer with key reachable at endpoint and routes allowed
// to it (replacing its previous allowed IPs).
func (w *WireGuard) SetPeer(key wgtypes.Key, endpoint netip.AddrPort, allowed []netip.Prefix) error {
	return w.configurePeer(key, endpoint, allowed, true)
}

func (w *WireGuard) configurePeer(key wgtypes.Key, endpoint netip.AddrPort, allowed []netip.Prefix, replace bool) error {
	ips := make([]net.IPNet, 0, len(allowed))
	for _, p := range allowed {
		ips = append(ips, *ipNet(p))
	}
	peer := wgtypes.PeerConfig{PublicKey: key, ReplaceAllowedIPs: replace, AllowedIPs: ips}
	if endpoint.IsValid() {
		// The side that knows where its peer is keeps the session alive:
		// it handshakes at once, and again soon after the peer restarts.
		peer.Endpoint = net.UDPAddrFromAddrPort(endpoint)
		keepalive := Keepalive
		peer.PersistentKeepaliveInterval = &keepalive
	}
	if err := w.wg.ConfigureDevice(w.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{peer}}); err != nil {
		return fmt.Errorf("peer %s on %s: %w", key, w.Name, err)
	}
	return nil
}

// AddAllowed routes add to the peer with key too, at endpoint (see
// SetPeer), keeping what it has: a change as small as what it adds, where
// SetPeer's grows with every vWire through the tunnel.
func (w *WireGuard) AddAllowed(key wgtypes.Key, endpoint netip.AddrPort, add []netip.Prefix) error {
	return w.configurePeer(key, endpoint, add, false)
}

// RemoveAllowed stops routing gone to the peer with key. Embedded
// wireguard-go removes just those (a change as small as what it removes);
// wgctrl has no such change, so a kernel device gets the peer's whole
// remaining set, which keep returns.
func (w *WireGuard) RemoveAllowed(key wgtypes.Key, gone []netip.Prefix, keep func() []netip.Prefix) error {
	if !w.Userspace || w.dev == nil {
		return w.configurePeer(key, netip.AddrPort{}, keep(), true)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\n", hex.EncodeToString(key[:]))
	for _, p := range gone {
		fmt.Fprintf(&b, "allowed_ip=-%s\n", p)
	}
	if err := w.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("peer %s on %s: %w", key, w.Name, err)
	}
	return nil
}

// RemovePeer removes the peer with key, and with it its sessions.
func (w *WireGuard) RemovePeer(key wgtypes.Key) error {
	if err := w.wg.ConfigureDevice(w.Name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: key, Remove: true}}}); err != nil {
		return fmt.Errorf("removing peer %s from %s: %w", key, w.Name, err)
	}
	return nil
}

// Peer is what the device knows of peer now: its endpoint (configured or
// learnt from its packets), last handshake and bytes each way.
func (w *WireGuard) Peer(peer wgtypes.Key) (wgtypes.Peer, error) {
	d, err := w.wg.Device(w.Name)
	if err != nil {
		return wgtypes.Peer{}, err
	}
	for _, p := range d.Peers {
		if p.PublicKey == peer {
			return p, nil
		}
	}
	return wgtypes.Peer{}, fmt.Errorf("%s has no peer %s", w.Name, peer)
}

// LastHandshake is when the device last completed a handshake with peer.
func (w *WireGuard) LastHandshake(peer wgtypes.Key) (time.Time, error) {
	p, err := w.Peer(peer)
	return p.LastHandshakeTime, err
}

// PeerEndpoint is the endpoint the device has for peer, configured or
// learnt from its packets.
func (w *WireGuard) PeerEndpoint(peer wgtypes.Key) (netip.AddrPort, error) {
	p, err := w.Peer(peer)
	if err != nil || p.Endpoint == nil {
		return netip.AddrPort{}, err
	}
	return p.Endpoint.AddrPort(), nil
}

// nsBind is wireguard-go's UDP bind, opening its sockets in the network
// namespace it was made in whichever goroutine opens them: wireguard-go
// brings a device up (and binds) also from its TUN event goroutine, whose
// thread is in the process's namespace, not necessarily the gateway's.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

// processNS is the network namespace the process started in, read while
// package variables are set, on the main thread, before any thread moved.
// (/proc/self/ns/net is the main thread's now, and a goroutine that
// locked the main thread may have moved it into a gateway's namespace: a
// device made there took the plain bind, and its socket opened in
// whichever namespace wireguard-go's thread was in.)
var processNS, processNSErr = netns.Get()

// bindHere is the bind for a device made by this thread: the plain one if
// the thread is in the process's namespace, else an nsBind.
func bindHere() (conn.Bind, error) {
	here, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("this thread's network namespace: %w", err)
	}
	if processNSErr != nil {
		here.Close()
		return nil, fmt.Errorf("the process's network namespace: %w", processNSErr)
	}
	if here.Equal(processNS) {
		here.Close()
		return conn.NewDefaultBind(), nil
	}
	return &nsBind{Bind: conn.NewDefaultBind(), ns: here}, nil
}

// Open opens the sockets on a thread in the bind's namespace.
func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = doIn(b.ns, b.ns.String(), func() (err error) {
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// Close removes the device.
func (w *WireGuard) Close() error {
	if w.uapi != nil {
		w.uapi.Close()
	}
	if w.dev != nil {
		w.dev.Close() // removes the TUN device
	}
	if w.link != nil {
		netlink.LinkDel(w.link)
	}
	if w.wg != nil {
		w.wg.Close()
	}
	if w.bind != nil {
		w.bind.ns.Close()
	}
	return nil
}
