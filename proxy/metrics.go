package proxy

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/internal/metrics"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
)

// Metrics counts what a domain's proxy does: its connections, their
// set-up, refusals and DNS look-ups. A nil *Metrics counts nothing.
type Metrics struct {
	conns      *prometheus.GaugeVec
	setup      *prometheus.HistogramVec
	refreshes  prometheus.Counter
	heals      prometheus.Counter
	closes     prometheus.Counter
	refusals   *prometheus.CounterVec
	lookups    *prometheus.CounterVec
	lookupTime prometheus.Histogram
}

// Why a request was refused: the reason label of
// vwire_proxy_refusals_total, and what a proxy tells a peer's proxy (an
// ErrorInfo of ReasonDomain), so that the client's domain counts the
// endpoint domain's reason too.
const (
	ReasonPolicy          = registry.ReasonPolicy // the service's policy, or the caller may not
	ReasonUnknownService  = "unknown_service"     // no such network service
	ReasonNoEndpoint      = "no_endpoint"         // no endpoint matches the client's labels
	ReasonPeerUnreachable = "peer_unreachable"    // no SRV record, DNS failed, or the peer's proxy did not answer
	ReasonNotFederated    = "not_federated"       // the service's domain is not a federated peer
	ReasonInvalid         = "invalid"             // a malformed request, or a peer's answer refused
	ReasonLimit           = "limit"               // a peer domain's limits
	ReasonDataplane       = "dataplane"           // the gateways could not program the vWire
	ReasonOther           = "other"
	ReasonDomain          = registry.ReasonDomain
)

var reasons = []string{ReasonPolicy, ReasonUnknownService, ReasonNoEndpoint, ReasonPeerUnreachable, ReasonNotFederated,
	ReasonInvalid, ReasonLimit, ReasonDataplane, ReasonOther}

// DNS look-ups' results: the result label of vwire_dns_lookups_total.
var lookupResults = []string{"answer", "cached", "stale", "nxdomain", "error"}

// The scope label: a connection within the domain, or to another.
const (
	scopeLocal  = "local"
	scopeRemote = "cross_domain"
)

// NewMetrics makes the proxy's collectors on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		conns: f.NewGaugeVec(prometheus.GaugeOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "connections",
			Help: "Connections stored in this domain, by network service, the other domain (this one's name for a connection within it) and state."},
			[]string{"service", "remote_domain", "state"}),
		setup: f.NewHistogramVec(prometheus.HistogramOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "setup_duration_seconds",
			Help: "Time to set up a new connection, from the request to the answer (both ends programmed), by scope.", Buckets: metrics.LatencyBuckets},
			[]string{"scope"}),
		refreshes: f.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "refreshes_total",
			Help: "Requests that refreshed a connection stored here."}),
		heals: f.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "heals_total",
			Help: "Refreshes that moved a connection to another endpoint, its own being gone or no longer selected."}),
		closes: f.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "closes_total",
			Help: "Connections closed by their requester (not those whose lease lapsed)."}),
		refusals: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "proxy", Name: "refusals_total",
			Help: "Connection requests refused, by reason; across domains the endpoint domain's reason, as its proxy gave it."},
			[]string{"reason"}),
		lookups: f.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Subsystem: "dns", Name: "lookups_total",
			Help: "DNS look-ups of peer domains' records, by result: answer (from the DNS server), cached, stale (a past answer stood in while DNS failed), nxdomain (no such name, or no SRV record there), error."},
			[]string{"result"}),
		lookupTime: f.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace, Subsystem: "dns", Name: "lookup_duration_seconds",
			Help: "Time of a DNS look-up, from the cache or the DNS server.", Buckets: metrics.LatencyBuckets}),
	}
	for _, r := range reasons {
		m.refusals.WithLabelValues(r)
	}
	for _, r := range lookupResults {
		m.lookups.WithLabelValues(r)
	}
	for _, s := range []string{scopeLocal, scopeRemote} {
		m.setup.WithLabelValues(s)
	}
	return m
}

// request counts a request's outcome: a new connection's set-up time
// (crossDomain: to or from another domain), a refresh of prev (and a
// heal, when its endpoint changed), or why it was refused (reason, "" for
// an answer).
func (m *Metrics) request(begin time.Time, crossDomain bool, prev, conn *proxypb.Connection, reason string) {
	switch {
	case m == nil:
	case reason != "":
		m.refusals.WithLabelValues(reason).Inc()
	case prev != nil:
		m.refreshes.Inc()
		if prev.GetNetworkServiceEndpointName() != conn.GetNetworkServiceEndpointName() {
			m.heals.Inc()
		}
	default:
		scope := scopeLocal
		if crossDomain {
			scope = scopeRemote
		}
		m.setup.WithLabelValues(scope).Observe(time.Since(begin).Seconds())
	}
}

func (m *Metrics) closed() {
	if m != nil {
		m.closes.Inc()
	}
}

// lookup counts a DNS look-up.
func (m *Metrics) lookup(begin time.Time, result string) {
	if m != nil {
		m.lookups.WithLabelValues(result).Inc()
		m.lookupTime.Observe(time.Since(begin).Seconds())
	}
}

// lookupResult is a look-up's result label: c came from the cache when
// asked is false, and stood in for a failed DNS exchange when stale. No
// such name, or no SRV record at a name, is nxdomain (no such domain, for
// vwire); an address look-up without records (an IPv4-only target's
// AAAA) is an answer.
func lookupResult(qtype uint16, c cached, err error, asked, stale bool) string {
	switch {
	case err != nil:
		return "error"
	case stale:
		return "stale"
	case c.rcode == dns.RcodeNameError || (qtype == dns.TypeSRV && len(c.rrs) == 0):
		return "nxdomain"
	case asked:
		return "answer"
	}
	return "cached"
}

// connKey is a connection's labels on vwire_proxy_connections.
type connKey struct{ service, remote, state string }

// keyOf labels a stored connection of domain own (of trust domain td):
// its service, the other domain (the service's, the endpoint's, or the
// requester's trust domain when it is not td; own for one within this
// domain) and its state.
func keyOf(c *proxypb.Connection, own string, td spiffeid.TrustDomain) connKey {
	k := connKey{remote: own, state: strings.ToLower(c.GetState().String())}
	name, err := registry.ParseName(c.GetNetworkService())
	if err == nil {
		k.service = name.Service
		if name.Domain != "" && name.Domain != own {
			k.remote = name.Domain
		}
	}
	if _, d, ok := strings.Cut(c.GetNetworkServiceEndpointName(), "@"); ok && k.remote == own && d != own {
		k.remote = d
	}
	if id, err := spiffeid.FromString(c.GetRequester()); err == nil && k.remote == own && !id.MemberOf(td) {
		k.remote = id.TrustDomain().Name()
	}
	return k
}

// allConnections sets vwire_proxy_connections to counts.
func (m *Metrics) allConnections(counts map[connKey]int) {
	if m == nil {
		return
	}
	m.conns.Reset()
	for k, n := range counts {
		m.conns.WithLabelValues(k.service, k.remote, k.state).Set(float64(n))
	}
}

// connection sets k's count; a count of zero goes.
func (m *Metrics) connection(k connKey, n int) {
	switch {
	case m == nil:
	case n <= 0:
		m.conns.DeleteLabelValues(k.service, k.remote, k.state)
	default:
		m.conns.WithLabelValues(k.service, k.remote, k.state).Set(float64(n))
	}
}

// WithReason has a status error say why, for the refusal's counters here
// and at the peer's proxy.
func WithReason(err error, reason string) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return err
	}
	if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ReasonDomain}); derr == nil {
		return d.Err()
	}
	return err
}

// registryStatus is registry.ToStatus(err), saying reason when what was
// looked up is not there.
func registryStatus(err error, reason string) error {
	if errors.Is(err, registry.ErrNotFound) {
		return WithReason(registry.ToStatus(err), reason)
	}
	return registry.ToStatus(err)
}

// ReasonOf is why err refused a request: the reason it carries, else one
// its gRPC code implies.
func ReasonOf(err error) string {
	reason, _ := reasonGiven(status.Convert(err))
	return reason
}

// reasonGiven is the reason a status carries (only one of the known ones:
// a peer's answer sets no label value of its own), else one its code
// implies (given false).
func reasonGiven(st *status.Status) (reason string, given bool) {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ReasonDomain && slices.Contains(reasons, info.GetReason()) {
			return info.GetReason(), true
		}
	}
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated:
		return ReasonPolicy, false
	case codes.InvalidArgument:
		return ReasonInvalid, false
	case codes.ResourceExhausted:
		return ReasonLimit, false
	}
	return ReasonOther, false
}
