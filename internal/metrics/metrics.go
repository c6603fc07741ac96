// Package metrics serves a role's Prometheus metrics (--metrics-listen) and
// wires gRPC's server and client metrics where servers and clients are
// built. The metrics themselves live beside what they count, in each
// package's metrics.go, registered on the registry this package makes.
package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
)

// Namespace prefixes every metric of vwire's own.
const Namespace = "vwire"

// LatencyBuckets are the histogram buckets of vwire's latencies, in
// seconds: from a local etcd round trip (a millisecond) to a peer's
// timeout (tens of seconds).
var LatencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// Desc describes a metric of vwire's that a collector makes at a scrape:
// vwire_SUBSYSTEM_NAME with labels.
func Desc(subsystem, name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, subsystem, name), help, labels, nil)
}

// Metrics is one process's registry and the gRPC metrics on it. A nil
// *Metrics counts nothing and adds no option: metrics are off.
type Metrics struct {
	Registry *prometheus.Registry
	server   *grpcprom.ServerMetrics
	client   *grpcprom.ClientMetrics
}

// New returns a registry with the Go runtime's and the process's metrics
// and gRPC's server and client metrics (calls by method and code, and
// their latency).
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		server: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(LatencyBuckets))),
		client: grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(LatencyBuckets))),
	}
	m.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.server, m.client)
	return m
}

// Registerer is where a package registers its collectors: nil when metrics
// are off (promauto.With(nil) makes collectors that count unregistered).
func (m *Metrics) Registerer() prometheus.Registerer {
	if m == nil {
		return nil
	}
	return m.Registry
}

// ServerOptions count a gRPC server's calls. They go first in its
// interceptor chain, so that calls refused by the later interceptors
// (authorization, limits) count too.
func (m *Metrics) ServerOptions() []grpc.ServerOption {
	if m == nil {
		return nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.server.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.server.StreamServerInterceptor()),
	}
}

// Registered has every method of srv reported from the start, at zero.
func (m *Metrics) Registered(srv *grpc.Server) {
	if m != nil {
		m.server.InitializeMetrics(srv)
	}
}

// DialOptions count a gRPC client's calls.
func (m *Metrics) DialOptions() []grpc.DialOption {
	if m == nil {
		return nil
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(m.client.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(m.client.StreamClientInterceptor()),
	}
}

// Server serves a registry's metrics over plain HTTP at /metrics.
type Server struct {
	*Metrics
	srv *http.Server
	lis net.Listener
}

// Serve listens on addr (host:port; flag names the setting in errors) and
// serves a new registry there until Close.
func Serve(flag, addr string) (*Server, error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("%s %q: %v (want host:port)", flag, addr, err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	m := New()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	s := &Server{Metrics: m, lis: lis, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := s.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			lis.Close()
		}
	}()
	return s, nil
}

// Addr is where the metrics are served.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Close stops serving. A nil *Server is closed already.
func (s *Server) Close() error {
	if s == nil {
		return nil
	}
	return s.srv.Close()
}

// Of is the metrics a server counts on: nil (off) for a nil *Server.
func Of(s *Server) *Metrics {
	if s == nil {
		return nil
	}
	return s.Metrics
}
