package domain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/kernel"
)

// nodeGateway is the gateway a domain runs in its own process: the kernel
// backend, its WireGuard tunnels, and the workloads' socket.
type nodeGateway struct {
	*gateway.Gateway
	tunnels *kernel.Tunnels
	backend *kernel.Backend
	srv     *grpc.Server
	proxy   *grpc.ClientConn
	cancel  context.CancelFunc
	done    chan struct{}
	keep    bool
}

// startGateway opens the kernel gateway with its state in DATA-DIR/gateway.
func (d *Domain) startGateway(cfg *Config, log *slog.Logger) (*nodeGateway, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--dataplane kernel needs root (CAP_NET_ADMIN) to program interfaces; run as root, or with --dataplane none for a control plane only")
	}
	dir := filepath.Join(cfg.DataDir, "gateway")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	key, err := loadKey(filepath.Join(dir, "wireguard.key"))
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
	g := &nodeGateway{tunnels: kernel.NewTunnels(key, max(wgMTU, 1280), log), keep: cfg.KeepDataplane, done: make(chan struct{})}
	if g.backend, err = kernel.New(); err != nil {
		return nil, err
	}
	g.backend.WithTunnels(g.tunnels)
	if g.Gateway, err = gateway.Open(cfg.Node, g.backend, dir, log); err != nil {
		g.backend.Close()
		return nil, err
	}
	g.Addr, g.OuterMTU, g.Endpoint = addr, mtu, d.Store.GetEndpoint
	g.SpiffeID = federation.ProxyID(d.TD).String() // the gateway runs with the domain's identity
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() { defer close(g.done); g.Run(ctx) }()
	log.Info("gateway programming its vWires", "node", cfg.Node, "tunnel_address", addr, "outer_mtu", mtu, "public_key", g.PublicKey())
	return g, nil
}

// serve opens the workloads' socket, whose calls go to the domain's own
// listener over mTLS.
func (g *nodeGateway) serve(d *Domain, path string) error {
	var err error
	if g.proxy, err = federation.DialDomain(d.lis.Addr().String(), d.Identity); err != nil {
		return err
	}
	s := &gateway.Server{G: g.Gateway, TD: d.TD, Proxy: g.proxy, Check: kernel.CheckWorkload, SpiffeID: federation.ProxyID(d.TD).String()}
	g.srv, _, err = s.Listen(path)
	return err
}

func (g *nodeGateway) close() {
	if g.srv != nil {
		g.srv.Stop()
	}
	if g.proxy != nil {
		g.proxy.Close()
	}
	g.cancel()
	<-g.done
	if !g.keep {
		g.RemoveAll(context.Background())
	}
	g.Gateway.Close()
	g.tunnels.Close()
	g.backend.Close()
}

// loadKey reads the gateway's WireGuard key, or makes one: peers keep
// knowing the gateway by it across restarts.
func loadKey(path string) (wgtypes.Key, error) {
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
	return k, os.WriteFile(path, []byte(k.String()), 0o600)
}
