package proxy

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func serveTestZone(t *testing.T) *Zone {
	t.Helper()
	z, err := ServeZone("127.0.0.1:0", "b.example", []Record{
		{Service: ProxyService, Addr: "127.0.0.2:7000", Priority: 10, Weight: 100},
		{Service: ProxyService, Addr: "[::1]:7001", Priority: 10, Weight: 100},
		{Service: BundleService, Addr: "127.0.0.2:7443", Priority: 10, Weight: 100},
	}, 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return z
}

func ask(t *testing.T, z *Zone, m *dns.Msg) *dns.Msg {
	t.Helper()
	r, err := dns.Exchange(m, z.Addr)
	if err != nil {
		t.Fatalf("%v: %v", m.Question, err)
	}
	return r
}

func query(t *testing.T, z *Zone, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	return ask(t, z, m)
}

// The zone answers as an authoritative server: SOA and NS at the apex,
// NODATA for names that exist only through names below them, negative
// answers with the SOA, SRV answers with their targets' addresses.
func TestZoneIsAuthoritative(t *testing.T) {
	z := serveTestZone(t)
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer int
		soa    bool // the SOA in the authority section
		extra  int
	}{
		{"_vwire._tcp.b.example.", dns.TypeSRV, dns.RcodeSuccess, 2, false, 2},
		{"_VWIRE._tcp.B.example.", dns.TypeSRV, dns.RcodeSuccess, 2, false, 2},
		{"_spiffe-bundle._tcp.b.example.", dns.TypeSRV, dns.RcodeSuccess, 1, false, 1},
		{"b.example.", dns.TypeSOA, dns.RcodeSuccess, 1, false, 0},
		{"b.example.", dns.TypeNS, dns.RcodeSuccess, 1, false, 1},
		{"_tcp.b.example.", dns.TypeA, dns.RcodeSuccess, 0, true, 0},        // an empty non-terminal: NODATA
		{"_vwire._tcp.b.example.", dns.TypeA, dns.RcodeSuccess, 0, true, 0}, // NODATA
		{"vwire-0.b.example.", dns.TypeA, dns.RcodeSuccess, 1, false, 0},    // a target
		{"nothing.b.example.", dns.TypeA, dns.RcodeNameError, 0, true, 0},   // NXDOMAIN
		{"x._vwire._tcp.b.example.", dns.TypeSRV, dns.RcodeNameError, 0, true, 0},
		{"c.example.", dns.TypeSOA, dns.RcodeRefused, 0, false, 0}, // not ours
	} {
		r := query(t, z, tc.name, tc.qtype)
		soa := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA
		if r.Rcode != tc.rcode || len(r.Answer) != tc.answer || soa != tc.soa || len(r.Extra) != tc.extra {
			t.Errorf("%s %s: %s, %d answers, SOA in authority %v, %d additional; want %s, %d, %v, %d\n%v",
				tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[r.Rcode], len(r.Answer), soa, len(r.Extra),
				dns.RcodeToString[tc.rcode], tc.answer, tc.soa, tc.extra, r)
		}
		if r.Rcode != dns.RcodeRefused && !r.Authoritative {
			t.Errorf("%s: not authoritative", tc.name)
		}
	}
	r := query(t, z, "nothing.b.example.", dns.TypeA)
	if soa := r.Ns[0].(*dns.SOA); soa.Minttl != 30 || soa.Hdr.Ttl != 30 || soa.Ns != "ns.b.example." {
		t.Errorf("negative answer's SOA: %v", soa)
	}
}

// Malformed or unsupported queries get an error answer, not a crash.
func TestZoneOddQueries(t *testing.T) {
	z := serveTestZone(t)
	empty := new(dns.Msg)
	empty.Id = dns.Id()
	if r := ask(t, z, empty); r.Rcode != dns.RcodeFormatError {
		t.Errorf("no question: %s", dns.RcodeToString[r.Rcode])
	}
	notify := new(dns.Msg)
	notify.SetNotify("b.example.")
	if r := ask(t, z, notify); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("NOTIFY: %s", dns.RcodeToString[r.Rcode])
	}
	m := new(dns.Msg)
	m.SetQuestion("_vwire._tcp.b.example.", dns.TypeSRV)
	m.SetEdns0(1232, false)
	if r := ask(t, z, m); r.IsEdns0() == nil || len(r.Answer) != 2 {
		t.Errorf("an EDNS query's answer: %v", r)
	}
	// Still serving.
	if r := query(t, z, "b.example.", dns.TypeSOA); r.Rcode != dns.RcodeSuccess || !strings.Contains(r.Answer[0].String(), "hostmaster.b.example.") {
		t.Errorf("after odd queries: %v", r)
	}
}
