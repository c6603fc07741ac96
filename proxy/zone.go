package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/vwire/vwire/internal/sameport"
)

// Zone serves a domain's own records for development (`vwire domain
// --dns-listen`), or several domains' (`vwire demo`): the SRV records of
// each domain's Records, each pointing at a target name
// "<service-label>-<n>.<domain>" with its A or AAAA record. It answers as
// an authoritative server should (RFC 1034, 2308, 8020), so that a strict
// recursive resolver in front of it finds the records: each zone has its
// SOA and NS at the apex; a name that exists only because names below it
// do (_tcp.<domain>) answers NODATA, not NXDOMAIN; negative answers carry
// the SOA (its minimum the records' TTL) for negative caching; SRV answers
// carry their targets' addresses as additional records. Names outside the
// zones are refused.
type Zone struct {
	udp, tcp *dns.Server
	Addr     string
	zones    []*zoneData
}

// zoneData is one zone: its records by owner name, and every name that
// exists (with the empty non-terminals between the owners and the apex).
type zoneData struct {
	origin string
	soa    dns.RR
	rrs    map[string][]dns.RR
	names  map[string]bool
}

// ServeZone serves domain's records on addr (UDP and TCP) with ttl.
func ServeZone(addr, domain string, records []Record, ttl uint32) (*Zone, error) {
	pc, l, err := ListenDNS(addr)
	if err != nil {
		return nil, err
	}
	z, err := ServeZonesOn(pc, l, map[string][]Record{domain: records}, ttl)
	if err != nil {
		pc.Close()
		l.Close()
	}
	return z, err
}

// ListenDNS opens UDP and TCP on addr (the same port for both).
func ListenDNS(addr string) (net.PacketConn, net.Listener, error) {
	pc, l, err := sameport.Listen(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--dns-listen: %w", err)
	}
	return pc, l, nil
}

// ServeZonesOn serves zones on sockets already open (a caller may open
// them inside another network namespace).
func ServeZonesOn(pc net.PacketConn, l net.Listener, zones map[string][]Record, ttl uint32) (*Zone, error) {
	z := &Zone{Addr: pc.LocalAddr().String()}
	serverIP := pc.LocalAddr().(*net.UDPAddr).IP
	for domain, records := range zones {
		zd, err := newZoneData(dns.Fqdn(strings.ToLower(domain)), records, ttl, serverIP)
		if err != nil {
			return nil, err
		}
		z.zones = append(z.zones, zd)
	}
	handler := dns.HandlerFunc(z.serve)
	z.udp, z.tcp = &dns.Server{PacketConn: pc, Handler: handler}, &dns.Server{Listener: l, Handler: handler}
	go z.udp.ActivateAndServe()
	go z.tcp.ActivateAndServe()
	return z, nil
}

// newZoneData builds origin's zone: its SOA, its NS "ns.<origin>" (at
// serverIP, or where the first record points when the server listens on
// every address), and each record's SRV and its target's address.
func newZoneData(origin string, records []Record, ttl uint32, serverIP net.IP) (*zoneData, error) {
	zd := &zoneData{origin: origin, rrs: map[string][]dns.RR{}, names: map[string]bool{}}
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	ns := "ns." + origin
	zd.soa = &dns.SOA{Hdr: hdr(origin, dns.TypeSOA), Ns: ns, Mbox: "hostmaster." + origin,
		Serial: uint32(time.Now().Unix()), Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl}
	zd.add(zd.soa)
	zd.add(&dns.NS{Hdr: hdr(origin, dns.TypeNS), Ns: ns})
	for i, r := range records {
		host, port, err := net.SplitHostPort(r.Addr)
		if err != nil {
			return nil, err
		}
		ip := net.ParseIP(host)
		if ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("--dns-listen: %s would point at %q, which peers cannot reach (give --advertise)", r.Service, r.Addr)
		}
		if serverIP == nil || serverIP.IsUnspecified() {
			serverIP = ip
		}
		portN, _ := strconv.Atoi(port)
		owner := r.Service + "." + origin
		target := strings.TrimPrefix(strings.SplitN(r.Service, ".", 2)[0], "_") + "-" + strconv.Itoa(i) + "." + origin
		zd.add(&dns.SRV{Hdr: hdr(owner, dns.TypeSRV), Priority: uint16(r.Priority), Weight: uint16(r.Weight), Port: uint16(portN), Target: target})
		zd.add(addressRR(hdr, target, ip))
	}
	if serverIP != nil && !serverIP.IsUnspecified() {
		zd.add(addressRR(hdr, ns, serverIP))
	}
	return zd, nil
}

// addressRR is name's A or AAAA record for ip.
func addressRR(hdr func(string, uint16) dns.RR_Header, name string, ip net.IP) dns.RR {
	if ip4 := ip.To4(); ip4 != nil {
		return &dns.A{Hdr: hdr(name, dns.TypeA), A: ip4}
	}
	return &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA), AAAA: ip}
}

// add adds rr, and its owner and the names between it and the apex.
func (zd *zoneData) add(rr dns.RR) {
	name := rr.Header().Name
	zd.rrs[name] = append(zd.rrs[name], rr)
	for n := name; dns.IsSubDomain(zd.origin, n) && !zd.names[n]; {
		zd.names[n] = true
		i, end := dns.NextLabel(n, 0)
		if end {
			break
		}
		n = n[i:]
	}
}

// lookup is the zone's answer to name and type qtype, lower case: the
// records, or NODATA (none, the name exists) or NXDOMAIN; additional
// records are the addresses of SRV and NS targets.
func (zd *zoneData) lookup(name string, qtype uint16) (answer, extra []dns.RR, exists bool) {
	if !zd.names[name] {
		return nil, nil, false
	}
	for _, rr := range zd.rrs[name] {
		if qtype == dns.TypeANY || rr.Header().Rrtype == qtype {
			answer = append(answer, rr)
		}
	}
	for _, rr := range answer {
		var target string
		switch rr := rr.(type) {
		case *dns.SRV:
			target = rr.Target
		case *dns.NS:
			target = rr.Ns
		default:
			continue
		}
		for _, a := range zd.rrs[target] {
			if t := a.Header().Rrtype; t == dns.TypeA || t == dns.TypeAAAA {
				extra = append(extra, a)
			}
		}
	}
	return answer, extra, true
}

// zoneOf is the zone name is in (the closest enclosing), or nil.
func (z *Zone) zoneOf(name string) *zoneData {
	var best *zoneData
	for _, zd := range z.zones {
		if dns.IsSubDomain(zd.origin, name) && (best == nil || len(zd.origin) > len(best.origin)) {
			best = zd
		}
	}
	return best
}

func (z *Zone) serve(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	switch {
	case req.Opcode != dns.OpcodeQuery:
		resp.SetRcode(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		resp.SetRcode(req, dns.RcodeFormatError)
	default:
		resp.SetReply(req)
		q := req.Question[0]
		zd := z.zoneOf(strings.ToLower(q.Name))
		if zd == nil || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
			resp.Rcode = dns.RcodeRefused
			break
		}
		resp.Authoritative = true
		answer, extra, exists := zd.lookup(strings.ToLower(q.Name), q.Qtype)
		resp.Answer, resp.Extra = answer, extra
		if !exists {
			resp.Rcode = dns.RcodeNameError
		}
		if len(answer) == 0 { // NXDOMAIN or NODATA: the SOA, for negative caching
			resp.Ns = []dns.RR{zd.soa}
		}
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		resp.SetEdns0(uint16(size), false)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// Close stops serving.
func (z *Zone) Close() error {
	return errors.Join(z.udp.Shutdown(), z.tcp.Shutdown())
}
