// Package domain runs every role of one vwire domain in one process, as
// `vwire domain` does and as tests compose several: etcd (embedded or
// external), the registry, the built-in CA (or a SPIRE agent), federation
// with peer domains and the SPIFFE bundle endpoint, all behind one gRPC
// listener whose SVID is the domain's proxy ID, with the proxy's request
// handling and, as root, the node's gateway (its workloads' unix socket).
package domain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
	"github.com/vwire/vwire/gateway"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/gateway/node"
	"github.com/vwire/vwire/internal/audit"
	"github.com/vwire/vwire/internal/metrics"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// Config configures a domain: the registry's settings and federation's.
type Config struct {
	registry.Config
	// BundleListen serves the domain's SPIFFE bundle endpoint; empty: none.
	BundleListen string
	// RefreshHint is how often peers are told to fetch the bundle.
	RefreshHint time.Duration
	// RotationPropagation and RotationOverlap time `vwire ca rotate`: a new
	// root is published this long before it issues, and the old one stays
	// published this long after.
	RotationPropagation time.Duration
	RotationOverlap     time.Duration
	// DNSServer answers the SRV look-ups that locate peer domains' proxies
	// (host:port); empty: the system's resolver.
	DNSServer string
	// Advertise is the host:port peers reach this domain's proxy at, for
	// its DNS records; default: --listen, when that is a specific address.
	Advertise string
	// DNSListen serves the domain's own zone (development); empty: none.
	DNSListen string
	// PublishDNS "etcd" writes the domain's records, SkyDNS layout, on a
	// lease, into DNSEtcdEndpoints (default: the domain's own etcd) for
	// CoreDNS's etcd plugin.
	PublishDNS       string
	DNSEtcdEndpoints []string
	// DNSTTL is the published records' TTL (and their lease's).
	DNSTTL time.Duration
	// DNSStaleMax bounds how long after its TTL a peer's last DNS answer
	// is used while DNS fails (RFC 8767); 0: never.
	DNSStaleMax time.Duration
	// PeerTimeout bounds how long a peer domain's proxy has to answer.
	PeerTimeout time.Duration
	// PeerLimits bound what one peer domain may cost the proxy.
	PeerLimits federation.PeerLimits
	// DebugListen serves Go's profiles (net/http/pprof) over plain HTTP;
	// empty: none.
	DebugListen string
	// ObserveRequests, when set, is called with every request the proxy's
	// network service answers (proxy.Server's Observe).
	ObserveRequests func(ctx context.Context, req *proxypb.NetworkServiceRequest, conn *proxypb.Connection, err error, refresh bool)
	// ServicesElsewhere, when set, says where the domain's services are
	// defined instead of through its registry API (a Kubernetes domain's
	// NetworkService objects): the API refuses to change them.
	ServicesElsewhere string
	// RegistrationsFrom are the federated domains whose proxies may
	// register endpoints here: a floating domain's peers.
	RegistrationsFrom []string
	// ConnectionLifetime is how long a connection lives unless refreshed.
	ConnectionLifetime time.Duration
	// Dataplane programs the vWires' ends, when a program that embeds a
	// domain brings its own (the sandbox's proxy.FakeDataplane); else
	// DataplaneKind says which gateway the domain runs.
	Dataplane proxy.Dataplane
	// DataplaneKind is the gateway's backend: "kernel", "none" for a
	// control plane only (requests are refused), or "auto": kernel when
	// running as root, else none with a warning. Ignored when Dataplane is
	// set.
	DataplaneKind string
	// GatewayAddress is the gateway's tunnel address; default: the address
	// of the default route's interface.
	GatewayAddress string
	// Node names this node's gateway (its path segment).
	Node string
	// GatewaySocket is where the node's workloads reach the gateway;
	// default DATA-DIR/gateway.sock. In containers it goes in a volume the
	// workloads' sidecars mount, apart from the data directory's secrets.
	GatewaySocket string
	// KeepDataplane leaves the interfaces and routes in place on shutdown.
	KeepDataplane bool
	// IntraDomain is the tunnel of IP vWires between two gateways of the
	// domain: "vxlan" or "wireguard".
	IntraDomain string
	// MaxPeerGateways bounds the WireGuard tunnels the gateway keeps, one
	// per peer gateway.
	MaxPeerGateways int
	// TunnelGrace is how long the gateway keeps a WireGuard tunnel after
	// its last vWire closed.
	TunnelGrace time.Duration
	// Peers to federate with at start, as --peer specs (see ParsePeerSpec);
	// `vwire federation add` adds more at run time.
	Peers []string
}

// NewConfig returns a Config with the defaults.
func NewConfig() *Config {
	node, _ := os.Hostname()
	return &Config{
		Config:              *registry.NewConfig(),
		DataplaneKind:       "none",
		IntraDomain:         "vxlan",
		MaxPeerGateways:     kernel.DefaultMaxPeers,
		TunnelGrace:         kernel.DefaultGrace,
		Node:                node,
		RefreshHint:         federation.DefaultRefreshHint,
		RotationPropagation: 2 * federation.DefaultRefreshHint,
		RotationOverlap:     federation.DefaultSVIDLifetime + time.Minute,
		DNSTTL:              30 * time.Second,
		DNSStaleMax:         proxy.DefaultStaleMax,
		PeerTimeout:         proxy.DefaultPeerTimeout,
		PeerLimits:          federation.DefaultPeerLimits,
		ConnectionLifetime:  proxy.DefaultConnectionLifetime,
	}
}

// AddFlags binds the config to flags.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	c.Config.AddFlags(fs)
	fs.StringVar(&c.BundleListen, "bundle-listen", c.BundleListen, "serve the SPIFFE bundle endpoint (https_spiffe) on this address")
	fs.DurationVar(&c.RefreshHint, "bundle-refresh-hint", c.RefreshHint, "how often peers should fetch this domain's bundle")
	fs.DurationVar(&c.RotationPropagation, "ca-rotation-propagation", c.RotationPropagation, "vwire ca rotate: publish a new root this long before it issues (more than peers' refresh interval)")
	fs.DurationVar(&c.RotationOverlap, "ca-rotation-overlap", c.RotationOverlap, "vwire ca rotate: keep the old root published this long after the switch (more than an SVID's lifetime)")
	fs.StringVar(&c.DNSServer, "dns-server", c.DNSServer, "the DNS server (host:port) that locates peer domains (default: /etc/resolv.conf's)")
	fs.StringVar(&c.Advertise, "advertise", c.Advertise, "host:port peers reach this domain's proxy at, for its DNS records (default: --listen)")
	fs.StringVar(&c.DNSListen, "dns-listen", c.DNSListen, "serve this domain's own DNS zone here (for development)")
	fs.StringVar(&c.PublishDNS, "publish-dns", c.PublishDNS, `"etcd": keep this domain's DNS records in etcd for CoreDNS's etcd plugin`)
	fs.StringSliceVar(&c.DNSEtcdEndpoints, "dns-etcd-endpoints", c.DNSEtcdEndpoints, "the etcd CoreDNS reads (default: this domain's etcd)")
	fs.DurationVar(&c.DNSTTL, "dns-ttl", c.DNSTTL, "TTL of the published DNS records (and of their etcd lease)")
	fs.DurationVar(&c.DNSStaleMax, "dns-stale-max", c.DNSStaleMax, "while DNS fails, use a peer's last answer up to this long after its TTL (0: never)")
	fs.StringVar(&c.DebugListen, "debug-listen", c.DebugListen, "serve Go's runtime profiles (/debug/pprof/) over plain HTTP here; keep it private (off by default)")
	fs.StringSliceVar(&c.RegistrationsFrom, "registrations-from", c.RegistrationsFrom, "federated domains whose endpoints this domain takes, DOMAIN,... (a floating domain's peers); others' registrations are refused")
	fs.IntVar(&c.PeerLimits.Concurrent, "peer-max-concurrent", c.PeerLimits.Concurrent, "the most calls one peer domain may have in flight here at once (a stream counts while it lasts); more are refused")
	fs.IntVar(&c.PeerLimits.Connections, "peer-max-connections", c.PeerLimits.Connections, "the most live connections one peer domain may hold in this domain; a new one past it is refused")
	fs.Float64Var(&c.PeerLimits.Rate, "peer-rate", c.PeerLimits.Rate, "the calls a second one peer domain may make here on average; more are refused")
	fs.IntVar(&c.PeerLimits.Burst, "peer-burst", c.PeerLimits.Burst, "the calls one peer domain may make at once above --peer-rate")
	fs.DurationVar(&c.PeerTimeout, "peer-timeout", c.PeerTimeout, "how long a peer domain's proxy has to answer a call before the request fails")
	fs.DurationVar(&c.ConnectionLifetime, "connection-lifetime", c.ConnectionLifetime, "how long a connection lives unless its client refreshes it")
	fs.StringVar(&c.DataplaneKind, "dataplane", c.DataplaneKind, `the gateway's data plane: "kernel" (veth, WireGuard, VXLAN; needs root), "none" (control plane only), or "auto" (kernel as root, else none)`)
	fs.StringVar(&c.GatewayAddress, "gateway-address", c.GatewayAddress, "the gateway's tunnel address, which peer gateways send to (default: the default route's interface address)")
	fs.StringVar(&c.Node, "node", c.Node, "this node's name, for its gateway's path segment (default: the host name)")
	fs.StringVar(&c.GatewaySocket, "gateway-socket", c.GatewaySocket, "the unix socket the node's workloads reach the gateway on (default: DATA-DIR/gateway.sock)")
	fs.BoolVar(&c.KeepDataplane, "keep-dataplane", c.KeepDataplane, "on shutdown, leave the vWires' interfaces and routes in place")
	fs.IntVar(&c.MaxPeerGateways, "max-peer-gateways", c.MaxPeerGateways, "the most peer gateways the gateway keeps WireGuard tunnels to (a device each); a vWire through one more is refused")
	fs.DurationVar(&c.TunnelGrace, "tunnel-grace", c.TunnelGrace, node.GraceUsage)
	fs.StringVar(&c.IntraDomain, "intra-domain-tunnel", c.IntraDomain, `the tunnel of IP vWires between two gateways of this domain: "vxlan" (the domain's own network) or "wireguard" (encrypted there too)`)
	fs.StringArrayVar(&c.Peers, "peer", c.Peers, `federate with a peer at start: "DOMAIN;bundle-endpoint=URL;bundle=FILE[;trust-domain=TD][;endpoint-id=ID][;trust-only]" (repeatable)`)
}

// Validate reports the first wrong field by its flag name.
func (c *Config) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if c.BundleListen != "" {
		if _, _, err := net.SplitHostPort(c.BundleListen); err != nil {
			return fmt.Errorf("--bundle-listen %q: %v (want host:port)", c.BundleListen, err)
		}
		if c.SpiffeSocket != "" || c.Identity != nil {
			return errors.New("--bundle-listen and --spiffe-socket exclude each other: with SPIRE, the SPIRE server serves the trust domain's bundle endpoint (its federation.bundle_endpoint); give peers that one")
		}
	}
	if c.RefreshHint < federation.MinRefresh || c.RefreshHint > federation.MaxRefresh {
		return fmt.Errorf("--bundle-refresh-hint %v: between %v and %v", c.RefreshHint, federation.MinRefresh, federation.MaxRefresh)
	}
	if c.RotationPropagation <= c.RefreshHint {
		return fmt.Errorf("--ca-rotation-propagation %v: must exceed --bundle-refresh-hint %v, or peers may not have the new root when it starts issuing",
			c.RotationPropagation, c.RefreshHint)
	}
	if c.RotationOverlap <= 0 {
		return fmt.Errorf("--ca-rotation-overlap %v: must be positive", c.RotationOverlap)
	}
	if c.DNSServer != "" {
		if _, _, err := net.SplitHostPort(c.DNSServer); err != nil {
			return fmt.Errorf("--dns-server %q: %v (want host:port, e.g. 127.0.0.1:53)", c.DNSServer, err)
		}
	}
	if c.ConnectionLifetime < 2*time.Second {
		return fmt.Errorf("--connection-lifetime %v: at least 2s", c.ConnectionLifetime)
	}
	if c.PublishDNS != "" && c.PublishDNS != "etcd" {
		return fmt.Errorf("--publish-dns %q: the only publisher is etcd", c.PublishDNS)
	}
	if c.DebugListen != "" {
		if _, _, err := net.SplitHostPort(c.DebugListen); err != nil {
			return fmt.Errorf("--debug-listen %q: %v (want host:port)", c.DebugListen, err)
		}
	}
	if l := c.PeerLimits; l.Concurrent < 1 || l.Rate <= 0 || l.Burst < 1 || l.Connections < 1 {
		return fmt.Errorf("--peer-max-concurrent %d, --peer-rate %g, --peer-burst %d, --peer-max-connections %d: each must be positive", l.Concurrent, l.Rate, l.Burst, l.Connections)
	}
	if c.PeerTimeout < 100*time.Millisecond {
		return fmt.Errorf("--peer-timeout %v: at least 100ms", c.PeerTimeout)
	}
	if c.DNSStaleMax < 0 {
		return fmt.Errorf("--dns-stale-max %v: 0 or more", c.DNSStaleMax)
	}
	if c.DNSTTL < 2*time.Second {
		return fmt.Errorf("--dns-ttl %v: at least 2s (etcd leases have whole seconds)", c.DNSTTL)
	}
	if (c.PublishDNS != "" || c.DNSListen != "") && c.advertise() == "" {
		return fmt.Errorf("--advertise: --listen %q is not an address peers can reach; say which one they should use", c.Listen)
	}
	if err := node.CheckIntraDomain(c.IntraDomain); err != nil {
		return err
	}
	if err := node.CheckMaxPeers(c.MaxPeerGateways); err != nil {
		return err
	}
	if err := node.CheckTunnelGrace(c.TunnelGrace); err != nil {
		return err
	}
	for _, d := range c.RegistrationsFrom {
		if err := registry.ValidateDomain(d); err != nil {
			return fmt.Errorf("--registrations-from %q: %v", d, err)
		}
	}
	if c.DataplaneKind != "kernel" && c.DataplaneKind != "none" && c.DataplaneKind != "auto" {
		return fmt.Errorf("--dataplane %q: want auto, kernel or none", c.DataplaneKind)
	}
	if c.GatewayAddress != "" {
		if _, err := netip.ParseAddr(c.GatewayAddress); err != nil {
			return fmt.Errorf("--gateway-address %q: not an IP address", c.GatewayAddress)
		}
	}
	if c.Node == "" { // "" in a config file: the default
		c.Node, _ = os.Hostname()
	}
	if _, err := federation.GatewayID(spiffeid.RequireTrustDomainFromString("example.org"), c.Node); err != nil || c.Node == "" {
		return fmt.Errorf("--node %q: a node name is one path segment of letters, digits, '.', '-' and '_'", c.Node)
	}
	for _, p := range c.Peers {
		if _, err := ParsePeerSpec(p); err != nil {
			return fmt.Errorf("--peer %q: %v", p, err)
		}
	}
	return nil
}

// advertise is the proxy's address for DNS records, or "" if unknown.
func (c *Config) advertise() string {
	addr := c.Advertise
	if addr == "" {
		addr = c.Listen
	}
	host, port, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || ip.IsUnspecified() {
		return ""
	}
	return net.JoinHostPort(host, port)
}

// PeerSpec is a peer as --peer gives it.
type PeerSpec struct {
	Peer       *federationpb.Peer
	BundleFile string
}

// ParsePeerSpec parses "DOMAIN;bundle-endpoint=URL;bundle=FILE" with
// optional ";trust-domain=TD", ";endpoint-id=ID" and ";trust-only".
func ParsePeerSpec(s string) (PeerSpec, error) {
	parts := strings.Split(s, ";")
	spec := PeerSpec{Peer: &federationpb.Peer{Domain: strings.TrimSpace(parts[0])}}
	if err := registry.ValidateDomain(spec.Peer.Domain); err != nil {
		return spec, err
	}
	for _, kv := range parts[1:] {
		k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
		switch k {
		case "bundle-endpoint":
			if err := federation.CheckBundleEndpointURL(v); err != nil {
				return spec, err
			}
			spec.Peer.BundleEndpointUrl = v
		case "bundle":
			spec.BundleFile = v
		case "trust-domain":
			spec.Peer.TrustDomain = v
		case "endpoint-id":
			spec.Peer.EndpointId = v
		case "trust-only":
			spec.Peer.TrustOnly = true
		case "addresses":
			spec.Peer.Addresses = strings.Split(v, ",")
			if _, err := federation.ParseRanges(spec.Peer.Addresses); err != nil {
				return spec, err
			}
		default:
			return spec, fmt.Errorf("unknown part %q (want bundle-endpoint=, bundle=, trust-domain=, endpoint-id=, addresses= or trust-only)", kv)
		}
	}
	if spec.BundleFile == "" {
		return spec, errors.New("bundle=FILE is required: the peer's bundle to start from")
	}
	return spec, nil
}

// peerMethods are what a federated domain's proxy may call: look up,
// register its endpoints with this domain as a floating domain, and ask for
// and close connections.
var peerMethods = map[string]bool{
	registrypb.Registry_Find_FullMethodName:               true,
	registrypb.Registry_RegisterEndpoint_FullMethodName:   true,
	registrypb.Registry_RefreshEndpoint_FullMethodName:    true,
	registrypb.Registry_UnregisterEndpoint_FullMethodName: true,
	proxypb.NetworkService_Request_FullMethodName:         true,
	proxypb.NetworkService_Close_FullMethodName:           true,
}

// Domain is a running domain.
type Domain struct {
	Name     string
	TD       spiffeid.TrustDomain
	Etcd     *registry.Etcd
	Store    *registry.Store
	Identity *federation.Identity
	gateways *proxy.Gateways
	Peers    *federation.Peers
	// NetworkService is the proxy's network service API.
	NetworkService *proxy.Server
	// Limiter bounds what each peer domain may cost the proxy.
	Limiter *federation.Limiter

	pool    *proxy.Pool
	gw      *node.Node
	gwProxy *grpc.ClientConn // the gateway's connection to this domain
	zone    *proxy.Zone
	pub     *proxy.Publisher
	dnsCli  *clientv3.Client
	srv     *grpc.Server
	lis     net.Listener
	bundle  *federation.BundleEndpoint
	debug   *http.Server
	metrics *metrics.Server
	tracing *tracing.Tracing
	errc    chan error
	stop    chan struct{}
	wg      sync.WaitGroup
	closed  sync.Once
	err     error
}

// Start starts a domain as cfg says; it returns once it serves. On an
// error it has stopped whatever it started.
func Start(ctx context.Context, cfg *Config) (*Domain, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	td, err := cfg.SPIFFETrustDomain()
	if err != nil {
		return nil, err
	}
	d := &Domain{Name: cfg.Name, TD: td, errc: make(chan error, 1), stop: make(chan struct{})}
	if err := d.start(ctx, cfg); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// start starts the roles one after the other; goroutines it starts end
// with d.stop, so that Close can stop a domain that failed half-way.
func (d *Domain) start(ctx context.Context, cfg *Config) (err error) {
	log, td := cfg.Log(), d.TD
	if d.Identity, err = federation.OpenIdentity(ctx, cfg.SpiffeSocket, cfg.DataDir, federation.ProxyID(td), log); err != nil {
		return err
	}
	if cfg.MetricsListen != "" {
		if d.metrics, err = metrics.Serve("--metrics-listen", cfg.MetricsListen); err != nil {
			return err
		}
	}
	m := metrics.Of(d.metrics)
	if d.tracing, err = tracing.Start(cfg.OTLPEndpoint, cfg.Name); err != nil {
		return err
	}
	if d.Etcd, err = registry.OpenEtcd(ctx, &cfg.Config, registry.EtcdMetrics(m.Registerer())...); err != nil {
		return err
	}
	d.Etcd.OnFailure(d.fail)
	d.Store = registry.NewStore(d.Etcd.Client, cfg.Name)
	mirrorCtx, stopMirror := context.WithCancel(context.Background())
	mirrored := d.Store.Mirror(mirrorCtx)
	d.wg.Add(1)
	go func() { defer d.wg.Done(); <-d.stop; stopMirror(); <-mirrored }()
	// With SPIRE, SPIRE federates the bundles; vwire only binds domains.
	if d.Peers, err = federation.OpenPeers(ctx, d.Etcd.Client, cfg.Name, d.Identity.Trust, d.Identity, log); err != nil {
		return err
	}

	if m != nil {
		m.Registry.MustRegister(d.Store.Collector(), d.Peers.Collector())
	}
	pm := proxy.NewMetrics(m.Registerer())
	resolver := proxy.NewResolver(cfg.DNSServer)
	resolver.StaleMax, resolver.Metrics = cfg.DNSStaleMax, pm
	fed := &federation.Service{Own: td, Peers: d.Peers, CA: d.Identity.CA,
		Propagation: cfg.RotationPropagation, Overlap: cfg.RotationOverlap, ValidateDomain: registry.ValidateDomain,
		LocateBundleEndpoint: func(ctx context.Context, domain string) (string, error) {
			targets, err := resolver.LookupService(ctx, proxy.BundleService, domain)
			if err != nil {
				return "", err
			}
			return "https://" + targets[0].Addresses()[0], nil
		}}
	if err := configurePeers(ctx, fed, cfg.Peers); err != nil {
		return err
	}

	if d.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	binding := &federation.Binding{Own: td, Peers: d.Peers, PeerMethods: peerMethods}
	bindUnary, bindStream := binding.Interceptors()
	d.Limiter = federation.NewLimiter(cfg.PeerLimits, log)
	limitUnary, limitStream := d.Limiter.Interceptors()
	errUnary, errStream := registry.ErrorInterceptors()
	d.srv = grpc.NewServer(slices.Concat(federation.ServerOptions(d.Identity, federation.DomainAuthorizer(td, d.Peers), log),
		m.ServerOptions(), d.tracing.ServerOptions("proxy"), []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(bindUnary, limitUnary, audit.Interceptor(td, log), errUnary),
			grpc.ChainStreamInterceptor(bindStream, limitStream, errStream),
		})...)
	d.pool = proxy.NewPool(resolver, d.Identity, cfg.Name, d.Peers)
	d.pool.Timeout, d.pool.DialOptions = cfg.PeerTimeout, append(m.DialOptions(), d.tracing.DialOptions("proxy")...)
	var regOpts []registry.ServerOption
	regOpts = append(regOpts, registry.RegistrationsFrom(cfg.RegistrationsFrom))
	if cfg.ServicesElsewhere != "" {
		regOpts = append(regOpts, registry.ServicesElsewhere(cfg.ServicesElsewhere))
	}
	local := registry.NewServer(d.Store, td, cfg.EndpointLifetime, d.Peers, log, regOpts...)
	registrypb.RegisterRegistryServer(d.srv, proxy.NewRegistry(local, cfg.Name, td, d.pool))
	dp := cfg.Dataplane
	kind := cfg.DataplaneKind
	if kind == "auto" {
		kind = "kernel"
		if os.Geteuid() != 0 {
			kind = "none"
			log.Warn("not running as root: no data plane, connection requests are refused (run as root for vWires; --dataplane none silences this)")
		}
	}
	if dp == nil {
		// Its own gateway, if it runs one, and the nodes' `vwire gateway`s.
		d.gateways = &proxy.Gateways{TD: td, Source: d.Identity, Endpoint: d.Store.GetEndpoint, DialOptions: d.pool.DialOptions}
		if kind == "kernel" {
			if d.gw, err = d.startGateway(cfg, log); err != nil {
				return err
			}
			d.gateways.Local = d.gw
			if m != nil {
				m.Registry.MustRegister(d.gw.Collector())
			}
		}
		dp = d.gateways
	}
	d.NetworkService = &proxy.Server{Own: cfg.Name, TD: td, Store: d.Store, Peers: d.Peers, Pool: d.pool,
		Conns: proxy.NewConnections(d.Etcd.Client, cfg.Name), Dataplane: dp, Lifetime: cfg.ConnectionLifetime, Log: log, Metrics: pm, Observe: cfg.ObserveRequests,
		PeerMaxConnections: cfg.PeerLimits.Connections,
		PeerRanges: func(domain string) []netip.Prefix {
			p, _ := d.Peers.Lookup(domain)
			return p.Addresses
		}}
	proxypb.RegisterNetworkServiceServer(d.srv, d.NetworkService)
	op := &proxy.Operator{Own: cfg.Name, TD: td, Resolver: resolver, Peers: d.Peers, Pool: d.pool, Store: d.Store, Conns: d.NetworkService.Conns, Source: d.Identity, Etcd: d.Etcd.Client, Server: d.NetworkService}
	if d.gw != nil {
		op.Gateway = d.gw
	}
	proxypb.RegisterOperatorServer(d.srv, op)
	expireCtx, stopExpire := context.WithCancel(context.Background())
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		go func() { <-d.stop; stopExpire() }()
		d.NetworkService.Expire(expireCtx)
	}()
	fed.Bundle = func() (*spiffebundle.Bundle, error) {
		return nil, errors.New("this domain's bundle is SPIRE's: see spire-server bundle show")
	}
	if ca := d.Identity.CA; ca != nil {
		fed.Bundle = federation.OwnBundle(ca, cfg.RefreshHint)
		d.wg.Add(1)
		go d.tickCA(ca, log)
	}
	federationpb.RegisterFederationServer(d.srv, fed)
	// Readiness for probes (grpc-health-probe -spiffe, kubelet's grpc probe
	// through a sidecar): serving once Start returns.
	healthpb.RegisterHealthServer(d.srv, health.NewServer())
	m.Registered(d.srv)
	go func() {
		if err := d.srv.Serve(d.lis); err != nil {
			d.fail(err)
		}
	}()

	if cfg.BundleListen != "" {
		blis, err := net.Listen("tcp", cfg.BundleListen)
		if err != nil {
			return fmt.Errorf("--bundle-listen: %w", err)
		}
		if d.bundle, err = federation.ServeBundleEndpoint(blis, td, fed.Bundle, d.Identity, log); err != nil {
			return err
		}
	}
	if cfg.DebugListen != "" {
		dlis, err := net.Listen("tcp", cfg.DebugListen)
		if err != nil {
			return fmt.Errorf("--debug-listen: %w", err)
		}
		// Where goroutines wait for each other too: contended locks,
		// sampled (cheap; the block profile is not, and is left off).
		runtime.SetMutexProfileFraction(100)
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		d.debug = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go d.debug.Serve(dlis)
	}
	if err := d.publish(ctx, cfg); err != nil {
		return err
	}
	log.Info("domain serving", "domain", cfg.Name, "addr", d.lis.Addr().String(), "trust_domain", td.Name(),
		"etcd", d.Etcd.Summary(&cfg.Config), "bundle_endpoint", d.BundleURL())
	return nil
}

// MetricsAddr is where the domain serves its metrics ("" with none).
func (d *Domain) MetricsAddr() string {
	if d.metrics == nil {
		return ""
	}
	return d.metrics.Addr().String()
}

// configurePeers federates with the --peer peers that are not already
// stored as configured: a stored peer keeps its latest fetched bundle.
func configurePeers(ctx context.Context, fed *federation.Service, specs []string) error {
	for _, s := range specs {
		spec, _ := ParsePeerSpec(s) // validated
		raw, err := os.ReadFile(spec.BundleFile)
		if err != nil {
			return fmt.Errorf("--peer %s: %w", spec.Peer.GetDomain(), err)
		}
		if err := fed.Configure(ctx, spec.Peer, raw); err != nil {
			return fmt.Errorf("--peer %s: %w", spec.Peer.GetDomain(), err)
		}
	}
	return nil
}

// publish serves or writes the domain's DNS records, as configured.
func (d *Domain) publish(ctx context.Context, cfg *Config) error {
	if cfg.DNSListen == "" && cfg.PublishDNS == "" {
		return nil
	}
	advertise := cfg.advertise()
	if host, port, _ := net.SplitHostPort(advertise); port == "0" && cfg.Advertise == "" {
		_, port, _ = net.SplitHostPort(d.lis.Addr().String()) // the kernel chose it
		advertise = net.JoinHostPort(host, port)
	}
	records := []proxy.Record{{Service: proxy.ProxyService, Addr: advertise, Priority: 10, Weight: 100}}
	if d.bundle != nil {
		host, _, _ := net.SplitHostPort(advertise)
		_, port, _ := net.SplitHostPort(strings.TrimPrefix(d.bundle.URL(), "https://"))
		records = append(records, proxy.Record{Service: proxy.BundleService, Addr: net.JoinHostPort(host, port), Priority: 10, Weight: 100})
	}
	var err error
	if cfg.DNSListen != "" {
		if d.zone, err = proxy.ServeZone(cfg.DNSListen, cfg.Name, records, uint32(cfg.DNSTTL/time.Second)); err != nil {
			return err
		}
	}
	if cfg.PublishDNS == "etcd" {
		cli := d.Etcd.Client
		if len(cfg.DNSEtcdEndpoints) > 0 {
			if d.dnsCli, err = clientv3.New(clientv3.Config{Endpoints: cfg.DNSEtcdEndpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}); err != nil {
				return fmt.Errorf("--dns-etcd-endpoints: %w", err)
			}
			cli = d.dnsCli
		}
		instance := "p-" + strings.NewReplacer(".", "-", ":", "-", "[", "", "]", "").Replace(advertise)
		if d.pub, err = proxy.Publish(ctx, cli, cfg.Name, instance, records, cfg.DNSTTL, cfg.Log()); err != nil {
			return err
		}
	}
	return nil
}

// tickCA carries out the CA rotation steps when they are due.
func (d *Domain) tickCA(ca *federation.CA, log *slog.Logger) {
	defer d.wg.Done()
	for {
		select {
		case <-d.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
		before, _ := ca.RotationStatus()
		if err := ca.Tick(); err != nil {
			log.Error("CA rotation step failed; retrying", "err", err)
		} else if after, at := ca.RotationStatus(); after != before {
			log.Info("CA rotation step done", "done", before, "next", after, "at", at)
		}
	}
}

// GatewaySocket is where workloads reach the domain's gateway.
func (d *Domain) GatewaySocket(cfg *Config) string {
	if cfg.GatewaySocket != "" {
		return cfg.GatewaySocket
	}
	return node.Socket(cfg.DataDir)
}

// Gateway is the domain's gateway, or nil without one.
func (d *Domain) Gateway() *gateway.Gateway {
	if d.gw == nil {
		return nil
	}
	return d.gw.Gateway
}

// Addr is the gRPC listener's address.
func (d *Domain) Addr() net.Addr { return d.lis.Addr() }

// DNSAddr is where --dns-listen serves the domain's zone, or "".
func (d *Domain) DNSAddr() string {
	if d.zone == nil {
		return ""
	}
	return d.zone.Addr
}

// BundleURL is the bundle endpoint's URL, or "" without one.
func (d *Domain) BundleURL() string {
	if d.bundle == nil {
		return ""
	}
	return d.bundle.URL()
}

// Err reports a failure of the server or of the embedded etcd.
func (d *Domain) Err() <-chan error { return d.errc }

func (d *Domain) fail(err error) {
	select {
	case d.errc <- err:
	default:
	}
}

// Close stops everything; it is safe on a partly started Domain and more
// than once.
func (d *Domain) Close() error {
	d.closed.Do(func() { d.err = d.close() })
	return d.err
}

func (d *Domain) close() error {
	close(d.stop)
	d.wg.Wait()
	if d.bundle != nil {
		d.bundle.Close()
	}
	if d.debug != nil {
		d.debug.Close()
	}
	d.metrics.Close()
	// No request reaches the gateway once it starts removing its ends.
	if d.srv != nil {
		d.srv.Stop()
	} else if d.lis != nil {
		d.lis.Close()
	}
	if d.gw != nil {
		d.gw.Close()
		d.gwProxy.Close()
	}
	if d.pub != nil {
		d.pub.Close() // withdraw the records before going away
	}
	if d.dnsCli != nil {
		d.dnsCli.Close()
	}
	if d.zone != nil {
		d.zone.Close()
	}
	if d.pool != nil {
		d.pool.Close()
	}
	if d.Peers != nil {
		d.Peers.Close()
	}
	var errs []error
	if d.Etcd != nil {
		errs = append(errs, d.Etcd.Close())
	}
	if d.gateways != nil {
		d.gateways.Close()
	}
	if d.Identity != nil {
		errs = append(errs, d.Identity.Close())
	}
	errs = append(errs, d.tracing.Close()) // the spans of the last requests too
	return errors.Join(errs...)
}
