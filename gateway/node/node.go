// Package node runs a node's gateway: the kernel backend, its WireGuard
// tunnels, the reconciler and the workloads' unix socket. `vwire domain`
// runs one in its own process; `vwire gateway` runs one on any node of the
// domain, which the domain's proxy then calls over mTLS.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/gateway"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/internal/atomicfile"
	"github.com/vwire/vwire/internal/private"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/registry/registrypb"
)

// Config says how to run a node's gateway.
type Config struct {
	Node           string
	DataDir        string        // state in DataDir/gateway, workloads' socket DataDir/gateway.sock
	Socket         string        // the workloads' socket instead, when set
	GatewayAddress string        // the tunnel address; "": the default route's interface's
	Keep           bool          // leave the ends programmed on Close
	IntraDomain    string        // the tunnel of IP vWires within the domain: vxlan or wireguard
	MaxPeers       int           // peer gateways to keep tunnels to at most; 0: kernel.DefaultMaxPeers
	TunnelGrace    time.Duration // how long a tunnel outlives its last vWire (see kernel.Tunnels.Grace)
	TD             spiffeid.TrustDomain
	SpiffeID       string // the ID its path segments carry
	URL            string // where the proxy reaches its Service; "" inside the proxy's process
	// Proxy is the mTLS connection to the domain's proxy, which the
	// workloads' calls go to.
	Proxy *grpc.ClientConn
	// Endpoint looks up a registered endpoint of the domain by name.
	Endpoint func(ctx context.Context, name string) (*registrypb.Endpoint, error)
	Log      *slog.Logger
	// Tracing traces the workloads' calls and the gateway's to endpoints
	// (nil: off).
	Tracing *tracing.Tracing
}

// CheckIntraDomain says what is wrong with an --intra-domain-tunnel.
func CheckIntraDomain(t string) error {
	if t != "" && t != "vxlan" && t != "wireguard" {
		return fmt.Errorf("--intra-domain-tunnel %q: want vxlan or wireguard", t)
	}
	return nil
}

// GraceUsage is what --tunnel-grace means, for every command that has it.
const GraceUsage = "how long a WireGuard tunnel to a peer gateway outlives its last vWire, so that the next vWire to that gateway needs no new device and handshake (0: removed with the last vWire; all go at shutdown)"

// CheckTunnelGrace says what is wrong with a --tunnel-grace.
func CheckTunnelGrace(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--tunnel-grace %v: not negative (0 removes a tunnel with its last vWire)", d)
	}
	return nil
}

// CheckMaxPeers says what is wrong with a --max-peer-gateways.
func CheckMaxPeers(n int) error {
	if n < 1 {
		return fmt.Errorf("--max-peer-gateways %d: at least 1", n)
	}
	return nil
}

// Socket is where workloads reach the gateway of data directory dir.
func Socket(dir string) string { return filepath.Join(dir, "gateway.sock") }

// Node is a running gateway.
type Node struct {
	*gateway.Gateway
	tunnels *kernel.Tunnels
	backend *kernel.Backend
	srv     *grpc.Server
	cancel  context.CancelFunc
	done    chan struct{}
	keep    bool
}

// Start opens the kernel gateway with its state in DataDir/gateway,
// starts reprogramming it, and serves the workloads' socket.
func Start(cfg Config) (n *Node, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the gateway's kernel data plane needs root (CAP_NET_ADMIN) to program interfaces")
	}
	if err := CheckIntraDomain(cfg.IntraDomain); err != nil {
		return nil, err
	}
	log := cfg.Log
	dir := filepath.Join(cfg.DataDir, "gateway")
	if err := private.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("the gateway's state: %w", err)
	}
	key, err := loadKey(filepath.Join(dir, "wireguard.key"))
	if err != nil {
		return nil, err
	}
	inner, err := loadInner(filepath.Join(dir, "inner-address"))
	if err != nil {
		return nil, err
	}
	addr, mtu, err := kernel.TunnelAddress(cfg.GatewayAddress)
	if err != nil && cfg.GatewayAddress != "" {
		return nil, err
	}
	if err != nil {
		log.Warn("the gateway has no tunnel address; vWires are refused until --gateway-address is given", "err", err)
	}
	wgMTU, _ := dataplane.PathMTU(mtu, addr.Is6(), dataplane.WireGuardOverhead)
	n = &Node{tunnels: kernel.NewTunnels(key, max(wgMTU, 1280), log), keep: cfg.Keep, done: make(chan struct{})}
	n.tunnels.Max, n.tunnels.Grace = cfg.MaxPeers, cfg.TunnelGrace
	if n.backend, err = kernel.New(); err != nil {
		return nil, err
	}
	n.backend.WithTunnels(n.tunnels)
	if n.Gateway, err = gateway.Open(cfg.Node, n.backend, dir, log); err != nil {
		n.backend.Close()
		return nil, err
	}
	n.Addr, n.OuterMTU, n.Endpoint, n.Inner = addr, mtu, cfg.Endpoint, inner
	n.SpiffeID, n.URL, n.IntraDomain = cfg.SpiffeID, cfg.URL, cfg.IntraDomain
	n.Pins, n.CheckNamespace = &handover.Pins{Dir: filepath.Join(dir, "netns")}, handover.CheckPath
	n.DialOptions = cfg.Tracing.DialOptions("gateway")
	n.SweepPins()
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() { defer close(n.done); n.Run(ctx) }()
	s := &gateway.Server{G: n.Gateway, TD: cfg.TD, Proxy: cfg.Proxy, Check: kernel.CheckWorkload, SpiffeID: cfg.SpiffeID, Options: cfg.Tracing.ServerOptions("gateway")}
	sock := cfg.Socket
	if sock == "" {
		sock = Socket(cfg.DataDir)
	}
	if n.srv, _, err = s.Listen(sock); err != nil {
		n.Close()
		return nil, err
	}
	log.Info("gateway programming its vWires", "node", cfg.Node, "tunnel_address", addr, "outer_mtu", mtu, "public_key", n.PublicKey(), "socket", sock)
	return n, nil
}

// Close stops the gateway: its socket, its reconciler, and unless Keep the
// ends it programmed.
func (n *Node) Close() {
	if n.srv != nil {
		n.srv.Stop()
	}
	n.cancel()
	<-n.done
	if !n.keep {
		n.RemoveAll(context.Background())
	}
	n.Gateway.Close()
	n.tunnels.Close()
	n.backend.Close()
}

// loadInner is the gateway's inner address kept at path, chosen at random
// the first time.
func loadInner(path string) (netip.Addr, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		a, err := netip.ParseAddr(strings.TrimSpace(string(b)))
		if err != nil || !a.Is6() || a.Is4In6() {
			return a, fmt.Errorf("%s: not an IPv6 address (remove it: the gateway chooses another)", path)
		}
		return a, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return netip.Addr{}, err
	}
	a, err := gateway.NewInner()
	if err != nil {
		return a, err
	}
	return a, atomicfile.Write(path, []byte(a.String()+"\n"), 0o600)
}

// loadKey reads the gateway's WireGuard key, or makes one: peers keep
// knowing the gateway by it across restarts.
func loadKey(path string) (wgtypes.Key, error) {
	if err := private.Check(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, err
	}
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := wgtypes.ParseKey(string(b))
		if err != nil {
			return k, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, err
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return k, err
	}
	return k, atomicfile.Write(path, []byte(k.String()), 0o600) // a crash leaves no half key
}
