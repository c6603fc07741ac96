package federation

import (
	"context"
	"log/slog"
	"maps"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// PeerLimits bound what one federated peer domain may cost this domain's
// proxy, whatever its intent: calls in flight at once (a stream counts
// while it lasts) and calls a second (a token bucket). A call past either
// is refused with ResourceExhausted before it is handled, and counted.
// Calls from this domain's own members are not limited here.
type PeerLimits struct {
	Concurrent int     // calls in flight at once; 0: no limit
	Rate       float64 // calls a second, on average; 0: no limit
	Burst      int     // calls at once above Rate (at least 1)
	// Connections bounds the live connections one peer domain may hold
	// in this domain (enforced by the proxy); 0: no limit.
	Connections int
}

// DefaultPeerLimits are the limits of a domain that is told none: well
// above what a busy peer needs (a set-up is one call, a refresh one a
// minute), well below what would starve other peers.
var DefaultPeerLimits = PeerLimits{Concurrent: 128, Rate: 5000, Burst: 5000, Connections: 10_000}

// MaxMessageSize bounds a message any vwire server receives (gRPC's own
// default is 4 MiB): larger ones are refused, by their length prefix,
// before they are read into memory.
const MaxMessageSize = 1 << 20

// Limiter applies PeerLimits per source domain (see Binding, whose
// interceptors must run first).
type Limiter struct {
	limits PeerLimits
	log    *slog.Logger

	mu      sync.Mutex
	peers   map[string]*peerUse
	refused map[string]uint64 // "domain reason" → calls refused
}

type peerUse struct {
	inFlight int
	bucket   *rate.Limiter
	logged   time.Time // the last refusal logged
}

// NewLimiter returns a limiter of l.
func NewLimiter(l PeerLimits, log *slog.Logger) *Limiter {
	return &Limiter{limits: l, log: log, peers: map[string]*peerUse{}, refused: map[string]uint64{}}
}

// Refused counts the calls refused, by "domain reason" (reason: "rate" or
// "concurrency").
func (l *Limiter) Refused() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.refused)
}

// acquire admits a call from domain, or says why not; release ends it.
func (l *Limiter) acquire(domain, method string) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.peers[domain]
	if u == nil {
		u = &peerUse{}
		if l.limits.Rate > 0 {
			u.bucket = rate.NewLimiter(rate.Limit(l.limits.Rate), max(l.limits.Burst, 1))
		}
		l.peers[domain] = u
	}
	reason := ""
	switch {
	case l.limits.Concurrent > 0 && u.inFlight >= l.limits.Concurrent:
		reason = "concurrency"
		err = status.Errorf(codes.ResourceExhausted, "domain %q has %d calls in flight here, its most (--peer-max-concurrent): retry when one ends", domain, u.inFlight)
	case u.bucket != nil && !u.bucket.Allow():
		reason = "rate"
		err = status.Errorf(codes.ResourceExhausted, "domain %q calls more than %g times a second (--peer-rate): slow down", domain, l.limits.Rate)
	}
	if err != nil {
		l.refused[domain+" "+reason]++
		if now := time.Now(); now.Sub(u.logged) > 10*time.Second {
			u.logged = now
			l.log.Warn("refused calls of a peer domain past its limits", "domain", domain, "reason", reason, "method", method, "refused", l.refused[domain+" "+reason])
		}
		return nil, err
	}
	u.inFlight++
	return func() {
		l.mu.Lock()
		u.inFlight--
		l.mu.Unlock()
	}, nil
}

// Interceptors apply the limits to unary and streaming calls of peer
// domains.
func (l *Limiter) Interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			domain := SourceDomain(ctx)
			if domain == "" {
				return h(ctx, req)
			}
			release, err := l.acquire(domain, info.FullMethod)
			if err != nil {
				return nil, err
			}
			defer release()
			return h(ctx, req)
		}, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			domain := SourceDomain(ss.Context())
			if domain == "" {
				return h(srv, ss)
			}
			release, err := l.acquire(domain, info.FullMethod)
			if err != nil {
				return err
			}
			defer release()
			return h(srv, ss)
		}
}
