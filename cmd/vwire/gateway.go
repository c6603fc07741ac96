package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/gateway/node"
	"github.com/vwire/vwire/internal/metrics"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// gatewayPort is where `vwire gateway` serves its domain's proxy unless
// --listen says otherwise.
const gatewayPort = "7003"

func newGatewayCmd() *cobra.Command {
	var registryAddr, credentials, spiffeSocket, nodeName, dataDir, socket, listen, advertise, gatewayAddress, intraDomain, metricsListen string
	var maxPeers int
	var grace time.Duration
	var keep bool
	var att attestFlags
	var otlp otlpFlag
	cmd := &cobra.Command{
		Use:   "gateway --registry ADDR (--credentials DIR | --spiffe-socket PATH) [--node NAME]",
		Short: "Run a node's gateway on its own: the workloads' socket, the kernel data plane, and the service the domain's proxy calls",
		Long: `Run a node's gateway on its own, as root: the workloads of the node reach it on
DATA-DIR/gateway.sock (vwire endpoint and vwire connect --gateway unix://...),
it passes their calls to the domain at --registry over mTLS, and the domain's
proxy calls it back on --listen to program the vWires' ends (veth, WireGuard,
VXLAN), proving it is spiffe://TD/vwire/gateway/NODE. Its SVID comes from a
SPIRE agent (--spiffe-socket) or from a credentials directory made with
vwire ca issue spiffe://TD/vwire/gateway/NODE on the domain's host.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := node.CheckMaxPeers(maxPeers); err != nil {
				return usagef("%v", err)
			}
			if err := node.CheckTunnelGrace(grace); err != nil {
				return usagef("%v", err)
			}
			begin := time.Now()
			var ms *metrics.Server
			if metricsListen != "" {
				var err error
				if ms, err = metrics.Serve("--metrics-listen", metricsListen); err != nil {
					return err
				}
				defer ms.Close()
			}
			m := metrics.Of(ms)
			ctx := cmd.Context()
			log := slog.Default().With("role", "gateway")
			var src federation.Source
			var err error
			switch given := btoi(spiffeSocket != "") + btoi(credentials != "") + btoi(att.url != ""); {
			case given == 0:
				return usagef("give --credentials DIR (from vwire ca issue), --spiffe-socket PATH or, in Kubernetes, --attest URL: the gateway proves it is spiffe://TD/vwire/gateway/NODE")
			case given > 1:
				return usagef("--credentials, --spiffe-socket and --attest are three ways to the gateway's SVID: give one")
			case att.url != "":
				src, err = att.open(ctx, log)
			default:
				src, err = openSource(ctx, spiffeSocket, credentials, func(id spiffeid.ID) bool {
					return strings.HasPrefix(id.Path(), "/vwire/gateway/") && (nodeName == "" || id.Path() == "/vwire/gateway/"+nodeName)
				})
			}
			if err != nil {
				return err
			}
			defer src.Close()
			svid, err := src.GetX509SVID()
			if err != nil {
				return err
			}
			td := svid.ID.TrustDomain()
			given, ok := strings.CutPrefix(svid.ID.Path(), "/vwire/gateway/")
			switch {
			case !ok:
				return fmt.Errorf("the SVID is %s, not a gateway's (spiffe://%s/vwire/gateway/NODE)", svid.ID, td.Name())
			case nodeName == "":
				nodeName = given
			case nodeName != given:
				return fmt.Errorf("--node %q, but the SVID is %s's", nodeName, svid.ID)
			}
			tr, err := otlp.start(td.Name())
			if err != nil {
				return err
			}
			defer tr.Close()
			if err := os.MkdirAll(dataDir, 0o700); err != nil {
				return err
			}
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			defer lis.Close()
			if advertise == "" {
				if advertise, err = advertised(lis.Addr().String(), gatewayAddress); err != nil {
					return err
				}
			}
			proxy, err := federation.DialDomain(registryAddr, src, append(m.DialOptions(), tr.DialOptions("gateway")...)...)
			if err != nil {
				return err
			}
			defer proxy.Close()
			reg := registrypb.NewRegistryClient(proxy)
			if socket == "" {
				socket = node.Socket(dataDir)
			}
			n, err := node.Start(node.Config{Node: nodeName, DataDir: dataDir, Socket: socket, GatewayAddress: gatewayAddress, Keep: keep, IntraDomain: intraDomain, MaxPeers: maxPeers, TunnelGrace: grace,
				TD: td, SpiffeID: svid.ID.String(), URL: advertise, Proxy: proxy, Log: log, Tracing: tr,
				Endpoint: func(ctx context.Context, name string) (*registrypb.Endpoint, error) {
					return reg.GetEndpoint(ctx, &registrypb.GetEndpointRequest{Name: name})
				}})
			if err != nil {
				return err
			}
			defer n.Close()
			srv := grpc.NewServer(slices.Concat(federation.ServerOptions(src, federation.AuthorizeOf(federation.ProxyID(td)), log), m.ServerOptions(), tr.ServerOptions("gateway"))...)
			proxypb.RegisterGatewayServer(srv, &gateway.Service{G: n.Gateway})
			healthpb.RegisterHealthServer(srv, health.NewServer())
			if m != nil {
				m.Registered(srv)
				m.Registry.MustRegister(n.Collector())
			}
			failed := make(chan error, 1)
			go func() { failed <- srv.Serve(lis) }()
			defer srv.Stop()
			fmt.Fprintf(cmd.OutOrStdout(), "vwire gateway %s ready in %v: listening on %s for the proxy of %s (as %s); workloads: unix://%s\n",
				nodeName, time.Since(begin).Round(time.Millisecond), advertise, td.Name(), svid.ID, socket)
			select {
			case <-ctx.Done():
				log.Info("stopping", "node", nodeName)
				return nil
			case err := <-failed:
				return fmt.Errorf("gateway %s stopped: %w", nodeName, err)
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&registryAddr, "registry", "127.0.0.1:7001", "the domain's gRPC address (its --listen)")
	f.StringVar(&credentials, "credentials", "", "a credentials directory (svid.pem, svid.key, bundle.pem) for spiffe://TD/vwire/gateway/NODE, from vwire ca issue")
	f.StringVar(&spiffeSocket, "spiffe-socket", "", "get the SVID from this SPIRE agent socket instead")
	f.StringVar(&nodeName, "node", "", "this node's name (default: the SVID's, spiffe://TD/vwire/gateway/NODE)")
	f.StringVar(&dataDir, "data-dir", "vwire-gateway", "the gateway's state (gateway/) and the workloads' socket (gateway.sock)")
	f.StringVar(&socket, "gateway-socket", "", "the unix socket the node's workloads reach the gateway on (default: DATA-DIR/gateway.sock)")
	f.StringVar(&listen, "listen", ":"+gatewayPort, "where the domain's proxy calls the gateway (mTLS)")
	f.StringVar(&advertise, "advertise", "", "the host:port the proxy dials (default: --listen, its host the tunnel address when --listen has none)")
	f.StringVar(&gatewayAddress, "gateway-address", "", "the tunnel address peer gateways send to (default: the address of the default route's interface)")
	f.BoolVar(&keep, "keep-dataplane", false, "on shutdown, leave the vWires' interfaces and routes in place")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics (/metrics) over plain HTTP here, host:port (off by default)")
	otlp.add(f)
	att.add(f)
	f.IntVar(&maxPeers, "max-peer-gateways", kernel.DefaultMaxPeers, "the most peer gateways to keep WireGuard tunnels to (a device each); a vWire through one more is refused")
	f.DurationVar(&grace, "tunnel-grace", kernel.DefaultGrace, node.GraceUsage)
	f.StringVar(&intraDomain, "intra-domain-tunnel", "vxlan", `the tunnel of IP vWires whose endpoint is behind this gateway and whose client is of the same domain: "vxlan" or "wireguard"`)
	return cmd
}

// advertised is the address the proxy dials for a listener on addr: addr,
// or the tunnel address at its port when addr's host is unspecified.
func advertised(addr, gatewayAddress string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return addr, nil
	}
	tunnel, _, err := kernel.TunnelAddress(gatewayAddress)
	if err != nil {
		return "", fmt.Errorf("--advertise: --listen %s names no host and there is no tunnel address to use (%v)", addr, err)
	}
	return net.JoinHostPort(tunnel.String(), port), nil
}
