package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/audit"
	"github.com/vwire/vwire/internal/metrics"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/registry/registrypb"
)

// Etcd is the registry's etcd: an embedded member, or a client of an
// external cluster.
type Etcd struct {
	*clientv3.Client
	embedded *embed.Etcd
}

// OpenEtcd starts the embedded etcd under cfg.DataDir, or connects to
// cfg.EtcdEndpoints.
func OpenEtcd(ctx context.Context, cfg *Config, opts ...grpc.DialOption) (*Etcd, error) {
	if len(cfg.EtcdEndpoints) > 0 {
		cli, err := dialEtcd(ctx, cfg.EtcdEndpoints, cfg.EtcdCAFile, cfg.EtcdCertFile, cfg.EtcdKeyFile, opts)
		if err != nil {
			return nil, err
		}
		return &Etcd{Client: cli}, nil
	}
	e, err := startEmbeddedEtcd(etcdDir(cfg.DataDir))
	if err != nil {
		return nil, err
	}
	cli, err := dialEtcd(ctx, []string{e.Clients[0].Addr().String()}, "", "", "", opts)
	if err != nil {
		e.Close()
		return nil, err
	}
	return &Etcd{Client: cli, embedded: e}, nil
}

// OnFailure calls fail if the embedded etcd fails (never, for an external
// one) before Close.
func (e *Etcd) OnFailure(fail func(error)) {
	if e.embedded == nil {
		return
	}
	go func(errc <-chan error) { // ends when Close closes the channel
		if err, ok := <-errc; ok && err != nil {
			fail(fmt.Errorf("embedded etcd: %w", err))
		}
	}(e.embedded.Err())
}

// Close closes the client and stops the embedded member.
func (e *Etcd) Close() error {
	err := e.Client.Close()
	if e.embedded != nil {
		e.embedded.Close()
	}
	return err
}

// Summary says where the data lives, for logs.
func (e *Etcd) Summary(cfg *Config) string {
	if e.embedded != nil {
		return "embedded in " + etcdDir(cfg.DataDir)
	}
	return fmt.Sprint(cfg.EtcdEndpoints)
}

// Registry is a running registry on its own: etcd, the store, and a gRPC
// server that admits members of the domain's trust domain. (`vwire domain`
// serves the registry with the other roles on one listener instead.)
type Registry struct {
	Store *Store
	Etcd  *Etcd

	identity federation.Source
	ownsID   bool
	srv      *grpc.Server
	lis      net.Listener
	metrics  *metrics.Server
	tracing  *tracing.Tracing
	errc     chan error

	stopMirror context.CancelFunc
}

// Start starts a registry as cfg says. It returns once the registry serves;
// Close stops it.
func Start(ctx context.Context, cfg *Config) (r *Registry, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log()
	td, err := cfg.SPIFFETrustDomain()
	if err != nil {
		return nil, err
	}
	r = &Registry{errc: make(chan error, 1)}
	started := r
	defer func() {
		if err != nil { // the return has set r to nil
			started.Close()
		}
	}()

	r.identity = cfg.Identity
	if r.identity == nil {
		id, err := federation.OpenIdentity(ctx, cfg.SpiffeSocket, cfg.DataDir, federation.RegistryID(td), log)
		if err != nil {
			return nil, err
		}
		r.identity, r.ownsID = id, true
	}
	if cfg.MetricsListen != "" {
		if r.metrics, err = metrics.Serve("--metrics-listen", cfg.MetricsListen); err != nil {
			return nil, err
		}
	}
	m := metrics.Of(r.metrics)
	if r.tracing, err = tracing.Start(cfg.OTLPEndpoint, cfg.Name); err != nil {
		return nil, err
	}
	if r.Etcd, err = OpenEtcd(ctx, cfg, EtcdMetrics(m.Registerer())...); err != nil {
		return nil, err
	}
	r.Etcd.OnFailure(r.fail)
	r.Store = NewStore(r.Etcd.Client, cfg.Name)
	if m != nil {
		m.Registry.MustRegister(r.Store.Collector())
	}
	mirrorCtx, stopMirror := context.WithCancel(context.Background())
	mirrored := r.Store.Mirror(mirrorCtx)
	r.stopMirror = func() { stopMirror(); <-mirrored }

	if r.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	unary, stream := ErrorInterceptors()
	r.srv = grpc.NewServer(slices.Concat(federation.ServerOptions(r.identity, federation.AuthorizeMember(td), log),
		m.ServerOptions(), r.tracing.ServerOptions("registry"), []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(audit.Interceptor(td, log), unary),
			grpc.ChainStreamInterceptor(stream),
		})...)
	registrypb.RegisterRegistryServer(r.srv, NewServer(r.Store, td, cfg.EndpointLifetime, nil, log))
	m.Registered(r.srv)
	go func() {
		if err := r.srv.Serve(r.lis); err != nil {
			r.fail(err)
		}
	}()
	log.Info("registry serving", "domain", cfg.Name, "addr", r.lis.Addr().String(), "trust_domain", td.Name(), "etcd", r.Etcd.Summary(cfg))
	return r, nil
}

// Addr is the address the gRPC server listens on.
func (r *Registry) Addr() net.Addr { return r.lis.Addr() }

// Err reports a failure of the server or of the embedded etcd.
func (r *Registry) Err() <-chan error { return r.errc }

func (r *Registry) fail(err error) {
	select {
	case r.errc <- err:
	default: // one error is enough to stop on
	}
}

// Close stops the server, then etcd. It is safe on a partly started Registry.
func (r *Registry) Close() error {
	if r.srv != nil {
		r.srv.Stop()
	} else if r.lis != nil {
		r.lis.Close()
	}
	if r.stopMirror != nil {
		r.stopMirror()
	}
	r.metrics.Close()
	errs := []error{r.tracing.Close()}
	if r.Etcd != nil {
		errs = append(errs, r.Etcd.Close())
	}
	if r.ownsID && r.identity != nil {
		errs = append(errs, r.identity.Close())
	}
	return errors.Join(errs...)
}
