package registry

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/internal/metrics"
)

var (
	servicesDesc  = metrics.Desc("registry", "services", "Network services defined in this domain.")
	endpointsDesc = metrics.Desc("registry", "endpoints", "Endpoints registered in this domain (static ones and those whose lease is live).")
	lapsedDesc    = metrics.Desc("registry", "lease_expiries_total", "Endpoint registrations removed because their lease lapsed (not refreshed in time), as this process saw them.")
)

// storeCollector reports the store's services and endpoints at a scrape,
// from its in-memory copy (nothing while it has none: see Mirror).
type storeCollector struct{ s *Store }

// Collector reports the domain's services, endpoints and lapsed
// registrations when scraped.
func (s *Store) Collector() prometheus.Collector { return storeCollector{s} }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- servicesDesc
	ch <- endpointsDesc
	ch <- lapsedDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(lapsedDesc, prometheus.CounterValue, float64(c.s.lapsed.Load()))
	services, endpoints, ok := c.s.Counts()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(servicesDesc, prometheus.GaugeValue, float64(services))
	ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(endpoints))
}

// EtcdMetrics times the calls to etcd (its unary calls: reads, writes,
// transactions, leases) by method, on reg; nil when reg is nil.
func EtcdMetrics(reg prometheus.Registerer) []grpc.DialOption {
	if reg == nil {
		return nil
	}
	h := promauto.With(reg).NewHistogramVec(prometheus.HistogramOpts{Namespace: metrics.Namespace, Subsystem: "registry", Name: "etcd_request_duration_seconds",
		Help: "Round-trip time of a call to etcd, by gRPC method (watches not included).", Buckets: metrics.LatencyBuckets}, []string{"method"})
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		begin := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		h.WithLabelValues(method).Observe(time.Since(begin).Seconds())
		return err
	})}
}
