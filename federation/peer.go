package federation

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// Peer is a domain this one federates with: which trust domain speaks for
// it, and where and from whom to fetch that trust domain's bundle.
type Peer struct {
	// Domain is the peer's DNS name; TrustDomain its SPIFFE trust domain
	// (by default the same name).
	Domain      string
	TrustDomain spiffeid.TrustDomain
	// BundleEndpointURL is the peer's SPIFFE bundle endpoint (https_spiffe).
	BundleEndpointURL string
	// EndpointID is the SPIFFE ID the bundle endpoint must present.
	EndpointID spiffeid.ID
	// TrustOnly keeps the peer's workloads out of services that have no
	// policy of their own (the default policy admits federated workloads).
	TrustOnly bool
	// Addresses are the ranges the peer may assign across its vWires
	// (empty: any).
	Addresses []netip.Prefix
}

// Equal says whether two peers are configured alike.
func (p Peer) Equal(q Peer) bool {
	return p.Domain == q.Domain && p.TrustDomain == q.TrustDomain && p.BundleEndpointURL == q.BundleEndpointURL &&
		p.EndpointID == q.EndpointID && p.TrustOnly == q.TrustOnly && slices.Equal(p.Addresses, q.Addresses)
}

// ParseRanges parses a peer's address ranges (CIDR, at most 64).
func ParseRanges(ss []string) ([]netip.Prefix, error) {
	if len(ss) > 64 {
		return nil, fmt.Errorf("%d address ranges, at most 64", len(ss))
	}
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil || p != p.Masked() {
			return nil, fmt.Errorf("address range %q: want a prefix such as 172.16.0.0/12 (no host bits)", s)
		}
		out = append(out, p)
	}
	return out, nil
}

// RangeStrings writes address ranges as ParseRanges reads them.
func RangeStrings(ps []netip.Prefix) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// PeerStatus is what a Follower knows of its peer's bundle.
type PeerStatus struct {
	Peer
	// LastFetched is when a valid bundle last arrived (zero: only the
	// bootstrap bundle so far).
	LastFetched time.Time
	// Expires is when the bundle in use stops verifying anything: the
	// latest NotAfter of its authorities.
	Expires     time.Time
	Authorities int
	// LastError is the last failed fetch's reason, cleared by a good one;
	// Failures counts the failed fetches since the process started.
	LastError string
	Failures  int
	NextFetch time.Time
	// Source is where the bundle the domain trusts for the peer came from
	// (FromBundleEndpoint, FromBootstrap, FromSPIRE); "" when none is.
	// Expires and Authorities describe that bundle.
	Source string
}

// CheckBundleEndpointURL accepts only what the https_spiffe profile can
// fetch: an https URL with a host. Anything else (http above all: whoever
// is on the path could hand over a bundle and become trusted) is refused.
func CheckBundleEndpointURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("bundle endpoint %q: %v", raw, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("bundle endpoint %q: the scheme must be https, not %q: a SPIFFE bundle endpoint is fetched over TLS and authenticated (https_spiffe), never over plain http", raw, u.Scheme)
	}
	if u.Host == "" || u.User != nil {
		return fmt.Errorf("bundle endpoint %q: want https://HOST:PORT[/PATH], with no user name", raw)
	}
	return nil
}

// Refresh bounds: a peer's refresh hint is honoured within these.
const (
	MinRefresh = time.Second
	MaxRefresh = time.Hour
)

// Follower keeps one peer's bundle fresh in a Trust: it fetches at the
// bundle's refresh hint, backs off on failure, and keeps the last good
// bundle until a newer valid one arrives.
type Follower struct {
	peer  Peer
	trust *Trust
	log   *slog.Logger
	now   func() time.Time

	mu     sync.Mutex
	status PeerStatus

	cancel context.CancelFunc
	done   chan struct{}
	// OnUpdate, if set before Start, is called with each new valid bundle
	// (to persist it); ctx ends when the Follower is closed.
	OnUpdate func(context.Context, *spiffebundle.Bundle)
}

// NewFollower puts the bootstrap bundle into trust (after checking it) and
// returns a Follower for peer; Start begins fetching.
func NewFollower(peer Peer, bootstrap *spiffebundle.Bundle, trust *Trust, log *slog.Logger) (*Follower, error) {
	f := &Follower{peer: peer, trust: trust, log: log.With("peer", peer.Domain, "trust_domain", peer.TrustDomain.Name()), now: time.Now}
	usable, err := ValidateBundle(bootstrap, peer.TrustDomain, f.now())
	if err != nil {
		return nil, fmt.Errorf("bootstrap bundle of %q: %w", peer.Domain, err)
	}
	trust.Set(usable.X509Bundle())
	f.status = PeerStatus{Peer: peer, Expires: latestExpiry(usable), Authorities: len(usable.X509Authorities())}
	return f, nil
}

// Start fetches in the background until Close.
func (f *Follower) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	go f.run(ctx)
}

// Status reports the peer's bundle state.
func (f *Follower) Status() PeerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Close stops fetching. The peer's last good bundle stays trusted.
func (f *Follower) Close() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
	}
}

func (f *Follower) run(ctx context.Context) {
	defer close(f.done)
	hint, backoff := DefaultRefreshHint, MinRefresh
	for {
		next, err := f.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Retry sooner than the usual interval, never later.
			next, backoff = min(backoff, hint), min(2*backoff, MaxRefresh)
			f.log.Warn("federated bundle refused; keeping the last good one", "url", f.peer.BundleEndpointURL, "err", err, "retry_in", next)
		} else {
			hint, backoff = next, MinRefresh
		}
		f.mu.Lock()
		if err != nil {
			f.status.LastError = err.Error()
			f.status.Failures++
		}
		f.status.NextFetch = f.now().Add(next)
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

// fetch gets, checks and installs the peer's bundle; it returns when to
// fetch next.
func (f *Follower) fetch(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	b, err := fetchBundle(ctx, f.peer, f.trust)
	if err != nil {
		return 0, err
	}
	usable, err := ValidateBundle(b, f.peer.TrustDomain, f.now())
	if err != nil {
		return 0, err
	}
	prev, _ := f.trust.GetX509BundleForTrustDomain(f.peer.TrustDomain)
	f.trust.Set(usable.X509Bundle())
	if prev == nil || !prev.Equal(usable.X509Bundle()) {
		f.log.Info("federated bundle updated", "authorities", len(usable.X509Authorities()))
		if f.OnUpdate != nil {
			f.OnUpdate(ctx, usable)
		}
	}
	f.mu.Lock()
	f.status.LastFetched, f.status.LastError = f.now(), ""
	f.status.Expires, f.status.Authorities = latestExpiry(usable), len(usable.X509Authorities())
	f.mu.Unlock()
	hint, ok := b.RefreshHint()
	if !ok {
		hint = DefaultRefreshHint
	}
	return min(max(hint, MinRefresh), MaxRefresh), nil
}

// fetchBundle GETs peer's bundle over https_spiffe: the endpoint must
// present peer.EndpointID, verified with the bundle already trusted. (It
// does what go-spiffe's federation.FetchBundle does, with no keep-alive:
// that one leaves an idle connection behind every fetch.) A redirect is
// refused, not followed: it could send the fetch anywhere, off https too.
func fetchBundle(ctx context.Context, peer Peer, trust *Trust) (*spiffebundle.Bundle, error) {
	if err := CheckBundleEndpointURL(peer.BundleEndpointURL); err != nil {
		return nil, err
	}
	client := &http.Client{
		Transport: &http.Transport{
			TLSClientConfig:   tlsconfig.TLSClientConfig(trust, AuthorizeOf(peer.EndpointID)),
			DisableKeepAlives: true,
		},
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			return fmt.Errorf("the bundle endpoint redirected to %s: redirects are not followed (configure the endpoint's own URL)", req.URL.Redacted())
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer.BundleEndpointURL, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("bundle endpoint %q: %w", peer.BundleEndpointURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("could not GET bundle: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bundle endpoint %q answered %s", peer.BundleEndpointURL, resp.Status)
	}
	b, err := spiffebundle.Read(peer.TrustDomain, io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("unable to parse the bundle: %w", err)
	}
	return b, nil
}

// ErrBadBundle wraps every reason to refuse a peer's bundle.
var ErrBadBundle = errors.New("bad bundle")

// ValidateBundle checks a bundle claimed for td and returns the part to
// trust: its X.509 authorities that are valid now. It refuses a bundle with
// none, or with an authority that names another trust domain.
func ValidateBundle(b *spiffebundle.Bundle, td spiffeid.TrustDomain, now time.Time) (*spiffebundle.Bundle, error) {
	if b == nil || len(b.X509Authorities()) == 0 {
		return nil, fmt.Errorf("%w: no X.509 authorities for %q", ErrBadBundle, td)
	}
	var valid []*x509.Certificate
	var latest time.Time
	for _, ca := range b.X509Authorities() {
		for _, u := range ca.URIs {
			if id, err := spiffeid.FromURI(u); err == nil && id.TrustDomain() != td {
				return nil, fmt.Errorf("%w: an authority of the bundle for %q belongs to trust domain %q", ErrBadBundle, td, id.TrustDomain())
			}
		}
		if !ca.IsCA {
			return nil, fmt.Errorf("%w: authority %q of %q is not a CA certificate", ErrBadBundle, ca.Subject, td)
		}
		if ca.NotAfter.After(latest) {
			latest = ca.NotAfter
		}
		if now.Before(ca.NotAfter) && !now.Before(ca.NotBefore) {
			valid = append(valid, ca)
		}
	}
	if len(valid) == 0 {
		return nil, fmt.Errorf("%w: every authority of the bundle for %q has expired (the latest at %s)", ErrBadBundle, td, latest.Format(time.RFC3339))
	}
	out := spiffebundle.FromX509Authorities(td, valid)
	if hint, ok := b.RefreshHint(); ok {
		out.SetRefreshHint(hint)
	}
	if seq, ok := b.SequenceNumber(); ok {
		out.SetSequenceNumber(seq)
	}
	return out, nil
}

func latestExpiry(b *spiffebundle.Bundle) time.Time {
	var t time.Time
	for _, ca := range b.X509Authorities() {
		if ca.NotAfter.After(t) {
			t = ca.NotAfter
		}
	}
	return t
}
