package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.opentelemetry.io/otel/attribute"

	"github.com/vwire/vwire/internal/tracing"
)

// Errors of discovery.
var (
	// ErrUnknownDomain: the domain publishes no _vwire._tcp SRV record.
	ErrUnknownDomain = errors.New("unknown domain")
	// ErrDNS: the DNS server could not be asked or failed to answer.
	ErrDNS = errors.New("DNS failure")
)

// Target is one proxy of a domain: an SRV target with its addresses.
type Target struct {
	Host     string
	Port     uint16
	Priority uint16
	Weight   uint16
	Addrs    []netip.Addr
}

// Addresses are the target's host:port dial addresses.
func (t Target) Addresses() []string {
	out := make([]string, 0, len(t.Addrs))
	for _, a := range t.Addrs {
		out = append(out, netip.AddrPortFrom(a, t.Port).String())
	}
	return out
}

// Resolver finds a domain's proxies: the targets of _vwire._tcp.<domain>
// SRV records, their A and AAAA addresses (from the additional section when
// the server sends them, else asked for), ordered by RFC 2782 priority and
// weight. Answers are cached for their TTL, negative answers for
// NegativeTTL; a truncated UDP answer is asked again over TCP.
//
// What DNS answers cannot make the cache grow without bound: an answer is
// kept for at most MaxTTL, and at most MaxEntries names and types are kept
// (when full, those past use go first, then any).
//
// When the DNS server cannot be asked or fails (not when it says a name
// does not exist), the last answer, if it expired less than StaleMax ago,
// is used instead, as RFC 8767 lets resolvers do: DNS then has StaleWait
// to answer, not a whole Timeout, and after a failure the stale answer is
// used without asking again for StaleRecheck, so that an outage does not
// cost every request a DNS timeout.
type Resolver struct {
	// Server is the DNS server (host:port); empty: the first nameserver of
	// /etc/resolv.conf.
	Server string
	// NegativeTTL is how long "no such record" is remembered.
	NegativeTTL time.Duration
	// Timeout bounds each DNS exchange.
	Timeout time.Duration
	// StaleMax bounds how long after its expiry an answer may stand in
	// for one DNS cannot give (0: never).
	StaleMax time.Duration
	// StaleRecheck is how long a stale answer is used before DNS is asked
	// again; StaleWait, how long DNS may take to answer when a stale answer
	// could stand in.
	StaleRecheck, StaleWait time.Duration
	// MaxTTL caps the TTL an answer is kept for; MaxEntries, the names
	// and types kept.
	MaxTTL     time.Duration
	MaxEntries int
	// Metrics counts the look-ups (nil: not counted).
	Metrics *Metrics

	now func() time.Time
	mu  sync.Mutex
	// cache maps "name/type" to an answer and its expiry.
	cache map[string]cached
	// refreshing: keys asked for again in the background of a stale answer
	refreshing map[string]bool
}

type cached struct {
	rrs     []dns.RR
	extra   []dns.RR
	rcode   int
	expires time.Time
	recheck time.Time // while stale: when to ask DNS again
}

// Defaults of a Resolver's stale answers.
const (
	DefaultStaleMax     = time.Hour
	DefaultStaleRecheck = 30 * time.Second
	DefaultStaleWait    = 500 * time.Millisecond
	// As resolvers commonly cap them (unbound's cache-max-ttl).
	DefaultMaxTTL     = 24 * time.Hour
	DefaultMaxEntries = 10000
)

// NewResolver returns a Resolver that asks server (empty: the system's).
func NewResolver(server string) *Resolver {
	return &Resolver{Server: server, NegativeTTL: 5 * time.Second, Timeout: 3 * time.Second,
		StaleMax: DefaultStaleMax, StaleRecheck: DefaultStaleRecheck, StaleWait: DefaultStaleWait,
		MaxTTL: DefaultMaxTTL, MaxEntries: DefaultMaxEntries, now: time.Now, cache: map[string]cached{}, refreshing: map[string]bool{}}
}

func (r *Resolver) server() (string, error) {
	if r.Server != "" {
		return r.Server, nil
	}
	conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil || len(conf.Servers) == 0 {
		return "", fmt.Errorf("%w: no --dns-server and no nameserver in /etc/resolv.conf", ErrDNS)
	}
	return net.JoinHostPort(conf.Servers[0], conf.Port), nil
}

// query asks for name and type, from the cache when it is fresh, and
// counts the look-up.
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (cached, error) {
	ctx, span := tracing.Span(ctx, "dns lookup", attribute.String("dns.question.name", name), attribute.String("dns.question.type", dns.TypeToString[qtype]))
	defer span.End()
	begin := time.Now()
	c, asked, stale, err := r.lookup(ctx, name, qtype)
	result := lookupResult(qtype, c, err, asked, stale)
	r.Metrics.lookup(begin, result)
	span.SetAttributes(attribute.String("vwire.dns.result", result), attribute.Int("vwire.dns.records", len(c.rrs)))
	tracing.Fail(span, err)
	return c, err
}

// lookup is query: asked says whether the DNS server answered, stale
// whether a past answer stood in for it.
func (r *Resolver) lookup(ctx context.Context, name string, qtype uint16) (_ cached, asked, stale bool, _ error) {
	name = dns.Fqdn(name)
	key := name + "/" + dns.TypeToString[qtype]
	r.mu.Lock()
	c, ok := r.cache[key]
	r.mu.Unlock()
	now := r.now()
	if ok && now.Before(c.expires) {
		return c, false, false, nil
	}
	if ok && now.Before(c.recheck) {
		return c, false, true, nil
	}
	// With a stale answer to fall back on, DNS gets StaleWait (RFC 8767's
	// client response timer), not a full timeout.
	timeout := r.Timeout
	if ok && now.Before(c.expires.Add(r.StaleMax)) {
		timeout = min(timeout, r.StaleWait)
	}
	resp, err := r.ask(ctx, name, qtype, timeout)
	if err != nil {
		// DNS failed: a known answer stands in, for a while.
		if ok && now.Before(c.expires.Add(r.StaleMax)) {
			c.recheck = now.Add(r.StaleRecheck)
			r.mu.Lock()
			r.cache[key] = c
			start := timeout < r.Timeout && !r.refreshing[key]
			if start { // a slow server may still answer: it gets its whole Timeout
				r.refreshing[key] = true
			}
			r.mu.Unlock()
			if start {
				go r.refresh(name, qtype, key)
			}
			return c, false, true, nil
		}
		return cached{}, true, false, err
	}
	return r.store(key, qtype, resp), true, false, nil
}

// refresh asks for name and type with the whole Timeout, in the background
// of a stale answer, and caches what comes.
func (r *Resolver) refresh(name string, qtype uint16, key string) {
	resp, err := r.ask(context.Background(), name, qtype, r.Timeout)
	if err == nil {
		r.store(key, qtype, resp)
	}
	r.mu.Lock()
	delete(r.refreshing, key)
	r.mu.Unlock()
}

// store caches an answer for its TTL.
func (r *Resolver) store(key string, qtype uint16, resp *dns.Msg) cached {
	c := cached{rcode: resp.Rcode, extra: resp.Extra}
	ttl := r.NegativeTTL
	for _, rr := range resp.Answer {
		if rr.Header().Rrtype != qtype {
			continue // a CNAME on the way
		}
		c.rrs = append(c.rrs, rr)
		if t := time.Duration(rr.Header().Ttl) * time.Second; len(c.rrs) == 1 || t < ttl {
			ttl = t
		}
	}
	c.expires = r.now().Add(min(ttl, r.MaxTTL))
	r.mu.Lock()
	if _, ok := r.cache[key]; !ok && len(r.cache) >= r.MaxEntries {
		r.evict()
	}
	r.cache[key] = c
	r.mu.Unlock()
	return c
}

// evict makes room for one more entry: it drops the entries no look-up
// can use any more (expired, and past StaleMax), and if none, the one that
// expires first (not any: a flood of unknown names, cached briefly, must
// not push out a domain's records, which were just stored).
func (r *Resolver) evict() {
	now := r.now()
	soonest := ""
	for k, c := range r.cache {
		switch {
		case now.After(c.expires.Add(r.StaleMax)):
			delete(r.cache, k)
		case soonest == "" || c.expires.Before(r.cache[soonest].expires):
			soonest = k
		}
	}
	if len(r.cache) >= r.MaxEntries && soonest != "" {
		delete(r.cache, soonest)
	}
}

// ask asks the DNS server for name and type; anything but an answer or
// "no such name" is an ErrDNS.
func (r *Resolver) ask(ctx context.Context, name string, qtype uint16, timeout time.Duration) (*dns.Msg, error) {
	server, err := r.server()
	if err != nil {
		return nil, err
	}
	msg := new(dns.Msg)
	msg.SetQuestion(name, qtype)
	msg.RecursionDesired = true
	resp, err := r.exchange(ctx, "udp", msg, server, timeout)
	if err == nil && resp.Truncated {
		resp, err = r.exchange(ctx, "tcp", msg, server, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: asking %s for %s %s: %v", ErrDNS, server, name, dns.TypeToString[qtype], err)
	}
	switch resp.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
		return resp, nil
	}
	return nil, fmt.Errorf("%w: %s answered %s for %s %s", ErrDNS, server, dns.RcodeToString[resp.Rcode], name, dns.TypeToString[qtype])
}

// exchange asks server once over TCP, and over UDP up to three times
// within Timeout, as stub resolvers do: a datagram may be lost.
func (r *Resolver) exchange(ctx context.Context, network string, msg *dns.Msg, server string, timeout time.Duration) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	attempts := 1
	if network == "udp" {
		attempts = 3
	}
	client := &dns.Client{Net: network, Timeout: timeout / time.Duration(attempts)}
	var err error
	for range attempts {
		var resp *dns.Msg
		if resp, _, err = client.ExchangeContext(ctx, msg, server); err == nil {
			return resp, nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// Lookup returns the proxies of domain in the order to try them: by
// priority, and within a priority in a weighted random order (RFC 2782).
// Targets without an address are left out.
func (r *Resolver) Lookup(ctx context.Context, domain string) ([]Target, error) {
	return r.LookupService(ctx, ProxyService, domain)
}

// LookupService is Lookup for another of a domain's SRV services, such as
// BundleService.
func (r *Resolver) LookupService(ctx context.Context, service, domain string) ([]Target, error) {
	owner := service + "." + domain
	srv, err := r.query(ctx, owner, dns.TypeSRV)
	if err != nil {
		return nil, err
	}
	if len(srv.rrs) == 0 {
		return nil, fmt.Errorf("%w %q: no %s SRV record", ErrUnknownDomain, domain, owner)
	}
	var targets []Target
	for _, rr := range srv.rrs {
		s := rr.(*dns.SRV)
		if s.Target == "." { // RFC 2782: the service is decidedly not available
			continue
		}
		t := Target{Host: strings.TrimSuffix(s.Target, "."), Port: s.Port, Priority: s.Priority, Weight: s.Weight}
		if t.Addrs, err = r.addresses(ctx, s.Target, srv.extra); err != nil {
			return nil, err
		}
		if len(t.Addrs) > 0 {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w %q: the targets of %s have no addresses", ErrUnknownDomain, domain, owner)
	}
	return order(targets), nil
}

// addresses resolves an SRV target's name: A and AAAA records, from the
// SRV answer's additional section when it has them.
func (r *Resolver) addresses(ctx context.Context, host string, extra []dns.RR) ([]netip.Addr, error) {
	var out []netip.Addr
	collect := func(rrs []dns.RR) {
		for _, rr := range rrs {
			if !strings.EqualFold(rr.Header().Name, dns.Fqdn(host)) {
				continue
			}
			switch a := rr.(type) {
			case *dns.A:
				if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
					out = append(out, ip)
				}
			case *dns.AAAA:
				if ip, ok := netip.AddrFromSlice(a.AAAA); ok {
					out = append(out, ip)
				}
			}
		}
	}
	collect(extra)
	if len(out) > 0 {
		return out, nil
	}
	if ip, err := netip.ParseAddr(strings.TrimSuffix(host, ".")); err == nil {
		return []netip.Addr{ip}, nil // a target written as an address
	}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		c, err := r.query(ctx, host, qtype)
		if err != nil {
			return nil, err
		}
		collect(c.rrs)
	}
	return out, nil
}

// order sorts targets by priority and shuffles each priority by weight.
func order(targets []Target) []Target {
	sort.SliceStable(targets, func(i, j int) bool { return targets[i].Priority < targets[j].Priority })
	var out []Target
	for start := 0; start < len(targets); {
		end := start
		for end < len(targets) && targets[end].Priority == targets[start].Priority {
			end++
		}
		group := append([]Target(nil), targets[start:end]...)
		// RFC 2782: weight-0 targets first, so that they have a small chance.
		sort.SliceStable(group, func(i, j int) bool { return group[i].Weight == 0 && group[j].Weight != 0 })
		for len(group) > 0 {
			total := 0
			for _, t := range group {
				total += int(t.Weight)
			}
			pick := 0
			if total > 0 {
				// RFC 2782: a running sum, the first whose sum reaches a
				// random number in [0, total]; weight 0 has a small chance.
				n, sum := rand.IntN(total+1), 0
				for i, t := range group {
					sum += int(t.Weight)
					if sum >= n {
						pick = i
						break
					}
				}
			} else {
				pick = rand.IntN(len(group))
			}
			out = append(out, group[pick])
			group = append(group[:pick], group[pick+1:]...)
		}
		start = end
	}
	return out
}
