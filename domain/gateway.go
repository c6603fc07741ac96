package domain

import (
	"errors"
	"log/slog"
	"os"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway/node"
)

// startGateway runs the domain's own gateway in its process (state in
// DATA-DIR/gateway, workloads' socket --gateway-socket); it reaches the
// domain's own listener over mTLS, with the domain's identity.
func (d *Domain) startGateway(cfg *Config, log *slog.Logger) (*node.Node, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--dataplane kernel needs root (CAP_NET_ADMIN) to program interfaces; run as root, or with --dataplane none for a control plane only")
	}
	proxy, err := federation.DialDomain(d.lis.Addr().String(), d.Identity, d.tracing.DialOptions("gateway")...)
	if err != nil {
		return nil, err
	}
	n, err := node.Start(node.Config{Node: cfg.Node, DataDir: cfg.DataDir, Socket: d.GatewaySocket(cfg), GatewayAddress: cfg.GatewayAddress, Keep: cfg.KeepDataplane, IntraDomain: cfg.IntraDomain, MaxPeers: cfg.MaxPeerGateways, TunnelGrace: cfg.TunnelGrace,
		TD: d.TD, SpiffeID: federation.ProxyID(d.TD).String(), // the gateway runs with the domain's identity
		Proxy: proxy, Endpoint: d.Store.GetEndpoint, Log: log, Tracing: d.tracing})
	if err != nil {
		proxy.Close()
		return nil, err
	}
	d.gwProxy = proxy
	return n, nil
}
