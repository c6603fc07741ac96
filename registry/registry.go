package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry/registrypb"
)

// Registry is a running registry: etcd (embedded or a client of an external
// cluster), the store, and the gRPC server.
type Registry struct {
	Store *Store
	Etcd  *clientv3.Client

	cfg      *Config
	identity federation.Source
	ownsID   bool
	embedded *embed.Etcd
	srv      *grpc.Server
	lis      net.Listener
	errc     chan error
}

// Start starts a registry as cfg says. It returns once the registry serves;
// Close stops it.
func Start(ctx context.Context, cfg *Config) (r *Registry, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TD())
	if err != nil {
		return nil, fmt.Errorf("--trust-domain %q: %w", cfg.TD(), err)
	}
	r = &Registry{cfg: cfg, errc: make(chan error, 1)}
	defer func() {
		if err != nil {
			r.Close()
		}
	}()

	r.identity = cfg.Identity
	if r.identity == nil {
		if r.identity, err = federation.OpenIdentity(ctx, cfg.SpiffeSocket, cfg.DataDir, federation.RegistryID(td), log); err != nil {
			return nil, err
		}
		r.ownsID = true
	}

	if len(cfg.EtcdEndpoints) == 0 {
		if r.embedded, err = startEmbeddedEtcd(etcdDir(cfg.DataDir)); err != nil {
			return nil, err
		}
		go func(etcdErr <-chan error) {
			if err, ok := <-etcdErr; ok && err != nil {
				r.fail(fmt.Errorf("embedded etcd: %w", err))
			}
		}(r.embedded.Err())
		r.Etcd, err = dialEtcd(ctx, []string{r.embedded.Clients[0].Addr().String()}, "", "", "")
	} else {
		r.Etcd, err = dialEtcd(ctx, cfg.EtcdEndpoints, cfg.EtcdCAFile, cfg.EtcdCertFile, cfg.EtcdKeyFile)
	}
	if err != nil {
		return nil, err
	}
	r.Store = NewStore(r.Etcd, cfg.Name)

	if r.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	unary, stream := errorInterceptors()
	r.srv = grpc.NewServer(
		grpc.Creds(federation.ServerCredentials(r.identity, tlsconfig.AuthorizeMemberOf(td), log)),
		grpc.ChainUnaryInterceptor(unary),
		grpc.ChainStreamInterceptor(stream),
	)
	registrypb.RegisterRegistryServer(r.srv, &server{store: r.Store, td: td, lifetime: cfg.EndpointLifetime, log: log})
	go func() {
		if err := r.srv.Serve(r.lis); err != nil {
			r.fail(err)
		}
	}()
	log.Info("registry serving", "domain", cfg.Name, "addr", r.lis.Addr().String(), "trust_domain", td.Name(), "etcd", etcdSummary(cfg))
	return r, nil
}

func etcdSummary(cfg *Config) string {
	if len(cfg.EtcdEndpoints) == 0 {
		return "embedded in " + etcdDir(cfg.DataDir)
	}
	return fmt.Sprint(cfg.EtcdEndpoints)
}

// Addr is the address the gRPC server listens on.
func (r *Registry) Addr() net.Addr { return r.lis.Addr() }

// Identity is the registry's SVID source.
func (r *Registry) Identity() federation.Source { return r.identity }

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
	var errs []error
	if r.Etcd != nil {
		errs = append(errs, r.Etcd.Close())
	}
	if r.embedded != nil {
		r.embedded.Close()
	}
	if r.ownsID && r.identity != nil {
		errs = append(errs, r.identity.Close())
	}
	return errors.Join(errs...)
}
