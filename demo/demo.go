// Package demo builds Marsha's four domains on one Linux machine (`vwire
// demo`): a network namespace per domain on a shared "internet" bridge, a
// DNS server for their zones, `vwire domain` in each, federation between
// all of them through the real `vwire federation` commands, the service
// marshas-app-connectivity with two endpoints in the data centre, and a
// client in each of the other three domains. It prints what each client
// got and removes everything it made when it ends.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
)

// Service is the network service Marsha's workloads connect to.
const Service = "marshas-app-connectivity"

// Site is one of Marsha's domains.
type Site struct {
	Short  string // namespace and node names: public-k8s
	Domain string // public-k8s.marsha.example
}

// Sites are Marsha's four domains; the last, the data centre, serves the
// service and the others are its clients.
var Sites = []Site{
	{"public-k8s", "public-k8s.marsha.example"},
	{"private-k8s", "private-k8s.marsha.example"},
	{"vim", "vim.marsha.example"},
	{"dc", "dc.marsha.example"},
}

const (
	bridgeAddr = "10.200.0.254"
	dnsAddr    = bridgeAddr + ":53"
)

const manifest = `apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: ` + Service + `
spec:
  payload: IP
`

// Options say how to run the demo.
type Options struct {
	Bin    string    // the vwire binary the domains and workloads run
	Prefix string    // of every namespace the demo makes ("vwire-")
	Keep   bool      // leave it running until ctx ends
	Out    io.Writer // progress, the table, the verdict
}

// Result is what one client got.
type Result struct {
	Site     Site
	NetNS    string
	Conn     *proxypb.Connection
	RTT      time.Duration
	Err      error
	Endpoint string // name@domain
}

// demo is one run: what it made, to remove in reverse.
type demo struct {
	o        Options
	dir      string
	internet string
	hosts    map[string]*host // by Short
	mu       sync.Mutex
	undo     []func()
}

type host struct {
	Site
	ns, addr, data string
}

// Run builds the four domains, connects the clients, prints the table and
// tears everything down (after ctx ends, with Keep). It returns an error
// if a step failed or any client did not reach the service.
func Run(ctx context.Context, o Options) (results []Result, err error) {
	if err := check(); err != nil {
		return nil, err
	}
	if o.Prefix == "" {
		o.Prefix = "vwire-"
	}
	d := &demo{o: o, hosts: map[string]*host{}}
	if err := d.free(); err != nil {
		return nil, err
	}
	if d.dir, err = os.MkdirTemp("", "vwire-demo-"); err != nil {
		return nil, err
	}
	defer d.teardown()
	d.later(func() { os.RemoveAll(d.dir) })

	fmt.Fprintf(o.Out, "vwire demo: Marsha's four domains on one machine (files in %s)\n", d.dir)
	begin := time.Now()
	steps := []struct {
		what string
		do   func(context.Context) (string, error)
	}{
		{"internet", d.network},
		{"DNS", d.dns},
		{"domains", d.domains},
		{"federation", d.federate},
		{"service", d.service},
		{"clients", func(ctx context.Context) (string, error) { results, err = d.clients(ctx); return "", err }},
	}
	for i, s := range steps {
		t := time.Now()
		what, err := s.do(ctx)
		if s.what == "clients" {
			what = fmt.Sprintf("%d clients requested %s@%s", len(results), Service, Sites[3].Domain)
		}
		if err != nil {
			fmt.Fprintf(o.Out, "[%d/%d] %-10s FAILED after %v\n", i+1, len(steps), s.what, since(t))
			return results, fmt.Errorf("%s: %w", s.what, err)
		}
		fmt.Fprintf(o.Out, "[%d/%d] %-10s %-66s %v\n", i+1, len(steps), s.what, what, since(t))
	}
	fmt.Fprintf(o.Out, "set up in %v\n\n", since(begin))
	failed := report(o.Out, results)
	if o.Keep && ctx.Err() == nil {
		d.lookAround(results)
		<-ctx.Done()
		fmt.Fprintln(o.Out, "\nstopping: closing the vWires, stopping the domains, removing the namespaces")
	}
	if failed > 0 {
		return results, fmt.Errorf("%d of %d clients did not reach %s", failed, len(results), Service)
	}
	return results, nil
}

func since(t time.Time) time.Duration {
	return time.Since(t).Round(10 * time.Millisecond)
}

// check says what the machine lacks for the demo.
func check() error {
	if os.Geteuid() != 0 {
		return errors.New("vwire demo needs root: it creates network namespaces, interfaces and tunnels (run: sudo make demo)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("vwire demo needs the ip command (Debian: apt-get install iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return errors.New("vwire demo needs /dev/net/tun for its WireGuard tunnels (modprobe tun)")
	}
	return nil
}

// later records how to undo a step.
func (d *demo) later(f func()) {
	d.mu.Lock()
	d.undo = append(d.undo, f)
	d.mu.Unlock()
}

func (d *demo) teardown() {
	for i := len(d.undo) - 1; i >= 0; i-- {
		d.undo[i]()
	}
}

// names are every namespace the demo makes.
func (d *demo) names() []string {
	names := []string{d.o.Prefix + "internet"}
	for _, s := range Sites {
		names = append(names, d.o.Prefix+s.Short)
	}
	for _, s := range Sites[:3] {
		names = append(names, d.o.Prefix+s.Short+"-app")
	}
	return append(names, d.o.Prefix+"dc-ep1", d.o.Prefix+"dc-ep2")
}

// free fails if a namespace the demo would make exists: another demo runs,
// or one was killed before it could clean up.
func (d *demo) free() error {
	var taken []string
	for _, n := range d.names() {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			taken = append(taken, n)
		}
	}
	if len(taken) > 0 {
		return fmt.Errorf("network namespaces %s exist: is another vwire demo running? (give --prefix, or remove them: ip netns del NAME)", strings.Join(taken, ", "))
	}
	return nil
}

// ip runs the ip command.
func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// netns makes a namespace with its loopback up.
func (d *demo) netns(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	d.later(func() { exec.Command("ip", "netns", "del", name).Run() })
	return ip("-n", name, "link", "set", "lo", "up")
}

// network makes the internet (a bridge in its own namespace) and a host
// namespace per domain on it, with a default route through the bridge.
func (d *demo) network(context.Context) (string, error) {
	d.internet = d.o.Prefix + "internet"
	if err := d.netns(d.internet); err != nil {
		return "", err
	}
	for _, args := range [][]string{
		{"-n", d.internet, "link", "add", "br0", "address", "02:76:77:00:00:fe", "type", "bridge"}, // fixed: ports do not change it
		{"-n", d.internet, "addr", "add", bridgeAddr + "/24", "dev", "br0"},
		{"-n", d.internet, "link", "set", "br0", "up"},
	} {
		if err := ip(args...); err != nil {
			return "", err
		}
	}
	for i, s := range Sites {
		h := &host{Site: s, ns: d.o.Prefix + s.Short, addr: fmt.Sprintf("10.200.0.%d", i+1), data: filepath.Join(d.dir, s.Domain)}
		if err := d.netns(h.ns); err != nil {
			return "", err
		}
		port := fmt.Sprintf("vwd%d-%s", i, strings.TrimSuffix(d.o.Prefix, "-"))
		if len(port) > 15 {
			port = port[:15]
		}
		for _, args := range [][]string{
			{"link", "add", port, "netns", d.internet, "type", "veth", "peer", "name", "eth0", "netns", h.ns},
			{"-n", d.internet, "link", "set", port, "master", "br0", "up"},
			{"-n", h.ns, "addr", "add", h.addr + "/24", "dev", "eth0"},
			{"-n", h.ns, "link", "set", "eth0", "up"},
			{"-n", h.ns, "route", "add", "default", "via", bridgeAddr},
		} {
			if err := ip(args...); err != nil {
				return "", err
			}
		}
		d.hosts[s.Short] = h
	}
	return fmt.Sprintf("namespace %s, bridge %s/24, %d hosts", d.internet, bridgeAddr, len(Sites)), nil
}

// dns serves every domain's SRV records (proxy on :7001, bundle endpoint
// on :7002) from the internet namespace.
func (d *demo) dns(context.Context) (string, error) {
	zones := map[string][]proxy.Record{}
	for _, h := range d.hosts {
		zones[h.Domain] = []proxy.Record{
			{Service: proxy.ProxyService, Addr: h.addr + ":7001", Priority: 10, Weight: 100},
			{Service: proxy.BundleService, Addr: h.addr + ":7002", Priority: 10, Weight: 100},
		}
	}
	var pc net.PacketConn
	var l net.Listener
	err := kernel.Do(d.internet, func() (err error) {
		pc, l, err = proxy.ListenDNS(dnsAddr)
		return err
	})
	if err != nil {
		return "", err
	}
	z, err := proxy.ServeZonesOn(pc, l, zones, 30)
	if err != nil {
		pc.Close()
		l.Close()
		return "", err
	}
	d.later(func() { z.Close() })
	return fmt.Sprintf("_vwire._tcp and _spiffe-bundle._tcp of %d zones on %s", len(zones), dnsAddr), nil
}

// run starts a vwire program on a host and records how to stop it.
func (d *demo) run(ctx context.Context, h *host, name string, ready func(string) bool, args ...string) (string, error) {
	stop, line, err := start(ctx, d.dir, name, h.ns, d.o.Bin, ready, args...)
	if err != nil {
		return "", err
	}
	d.later(stop)
	return line, nil
}

func readyLine(line string) bool { return strings.Contains(line, " ready in ") }

// domains starts `vwire domain` on every host, all at once.
func (d *demo) domains(ctx context.Context) (string, error) {
	errs := make([]error, len(Sites))
	var wg sync.WaitGroup
	for i, s := range Sites {
		h := d.hosts[s.Short]
		wg.Go(func() {
			_, errs[i] = d.run(ctx, h, s.Short+"-domain", readyLine, "domain", "--name", h.Domain,
				"--data-dir", h.data, "--listen", h.addr+":7001", "--bundle-listen", h.addr+":7002",
				"--dns-server", dnsAddr, "--node", s.Short+"-node1")
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d × vwire domain (etcd, registry, proxy, gateway, CA) ready", len(Sites)), nil
}

// cli runs a vwire command against h's domain, from h, as its admin.
func (d *demo) cli(ctx context.Context, h *host, args ...string) (string, error) {
	args = append(append([]string{"netns", "exec", h.ns, d.o.Bin}, args...), "--registry", h.addr+":7001", "--credentials", filepath.Join(h.data, "admin"))
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("vwire %s: %v\n%s", strings.Join(args[4:], " "), err, out)
	}
	return string(out), nil
}

// federate makes every domain a peer of every other, each peer's bundle
// taken from `vwire federation bundle`.
func (d *demo) federate(ctx context.Context) (string, error) {
	bundles := map[string]string{}
	for _, h := range d.hosts {
		b, err := d.cli(ctx, h, "federation", "bundle")
		if err != nil {
			return "", err
		}
		bundles[h.Domain] = filepath.Join(d.dir, h.Domain+".bundle")
		if err := os.WriteFile(bundles[h.Domain], []byte(b), 0o600); err != nil {
			return "", err
		}
	}
	n := 0
	for _, h := range d.hosts {
		for _, peer := range d.hosts {
			if peer != h {
				if _, err := d.cli(ctx, h, "federation", "add", peer.Domain, "--bundle", bundles[peer.Domain]); err != nil {
					return "", err
				}
				n++
			}
		}
	}
	return fmt.Sprintf("%d peerings (vwire federation bundle, vwire federation add)", n), nil
}

// service applies the service in the DC and starts its two endpoints.
func (d *demo) service(ctx context.Context) (string, error) {
	dc := d.hosts["dc"]
	file := filepath.Join(d.dir, Service+".yaml")
	if err := os.WriteFile(file, []byte(manifest), 0o600); err != nil {
		return "", err
	}
	if _, err := d.cli(ctx, dc, "apply", "-f", file); err != nil {
		return "", err
	}
	for i := 1; i <= 2; i++ {
		ns := fmt.Sprintf("%sdc-ep%d", d.o.Prefix, i)
		if err := d.netns(ns); err != nil {
			return "", err
		}
		name := fmt.Sprintf("marsha-app-%d", i)
		if _, err := d.run(ctx, dc, name, readyLine, "endpoint", "--name", name, "--service", Service,
			"--labels", "app=marsha,site=dc", "--cidr", fmt.Sprintf("172.16.%d.0/24", i), "--netns", ns,
			"--gateway", "unix://"+filepath.Join(dc.data, "gateway.sock")); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%s applied in %s, 2 endpoints", Service, dc.Domain), nil
}

// clients starts `vwire connect` in each other domain and pings through
// each vWire it got.
func (d *demo) clients(ctx context.Context) ([]Result, error) {
	target := Service + "@" + Sites[3].Domain
	results := make([]Result, 3)
	var wg sync.WaitGroup
	for i, s := range Sites[:3] {
		h := d.hosts[s.Short]
		r := &results[i]
		r.Site, r.NetNS = s, d.o.Prefix+s.Short+"-app"
		if r.Err = d.netns(r.NetNS); r.Err != nil {
			return nil, r.Err
		}
		wg.Go(func() {
			var line string
			line, r.Err = d.run(ctx, h, s.Short+"-client", func(l string) bool { return strings.HasPrefix(l, "{") },
				"connect", target, "--netns", r.NetNS, "--labels", "app=marsha,site="+s.Short, "-o", "json",
				"--gateway", "unix://"+filepath.Join(h.data, "gateway.sock"))
			if r.Err != nil {
				return
			}
			if r.Conn, r.Err = upEvent(line); r.Err != nil {
				return
			}
			r.Endpoint = r.Conn.GetNetworkServiceEndpointName()
			r.RTT, r.Err = ping(ctx, r.NetNS, r.Conn)
		})
	}
	wg.Wait()
	return results, ctx.Err()
}

// upEvent reads the connection out of `vwire connect -o json`'s first
// event.
func upEvent(line string) (*proxypb.Connection, error) {
	var ev struct {
		Event      string          `json:"event"`
		Error      string          `json:"error"`
		Connection json.RawMessage `json:"connection"`
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		return nil, fmt.Errorf("vwire connect printed %q: %w", line, err)
	}
	if ev.Event != "up" {
		return nil, fmt.Errorf("vwire connect: %s %s", ev.Event, ev.Error)
	}
	c := &proxypb.Connection{}
	return c, protojson.Unmarshal(ev.Connection, c)
}

// ping sends up to five echo requests through the vWire from the client's
// namespace and returns the fastest round trip.
func ping(ctx context.Context, ns string, c *proxypb.Connection) (time.Duration, error) {
	peer, err := client.Peer(c)
	if err != nil {
		return 0, err
	}
	p, err := client.NewProber(ns, peer)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	var best time.Duration
	var last error
	for range 5 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		rtt, err := p.Ping(pctx, peer)
		cancel()
		if err != nil {
			last = err
			continue
		}
		if best == 0 || rtt < best {
			best = rtt
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("no reply from %s through the vWire: %w", peer, last)
	}
	return best, nil
}

// report prints the table and the verdict; it returns how many failed.
func report(w io.Writer, results []Result) int {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tINTERFACE\tENDPOINT\tPATH\tTUNNEL\tRTT")
	failed := 0
	for _, r := range results {
		if r.Err != nil {
			failed++
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tFAILED: %v\n", r.Site.Domain, firstLine(r.Err))
			continue
		}
		var hops []string
		for _, s := range r.Conn.GetPath().GetSegments() {
			hops = append(hops, s.GetName())
		}
		tunnel := "none"
		if r.Conn.GetMechanism().GetWireguard() != nil {
			tunnel = "wireguard"
		} else if r.Conn.GetMechanism().GetVxlan() != nil {
			tunnel = "vxlan"
		}
		fmt.Fprintf(tw, "%s\tnsm0 %s\t%s\t%s\t%s, MTU %d\t%v\n", r.Site.Domain,
			strings.Join(r.Conn.GetIpContext().GetSrcIpAddrs(), ","), r.Endpoint,
			strings.Join(hops, " > "), tunnel, r.Conn.GetMtu(), r.RTT.Round(time.Microsecond))
	}
	tw.Flush()
	if failed == 0 {
		fmt.Fprintf(w, "\nPASS: %d of %d clients reached %s@%s\n", len(results), len(results), Service, Sites[3].Domain)
	} else {
		fmt.Fprintf(w, "\nFAIL: %d of %d clients did not reach %s@%s (logs: the files above)\n", failed, len(results), Service, Sites[3].Domain)
	}
	return failed
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// lookAround prints commands to inspect the running demo.
func (d *demo) lookAround(results []Result) {
	w := d.o.Out
	dc := d.hosts["dc"]
	fmt.Fprintln(w, "\nRunning until Ctrl-C. Look around:")
	for _, r := range results {
		if r.Err != nil {
			continue
		}
		peer, _ := client.Peer(r.Conn)
		fmt.Fprintf(w, "  ip netns exec %s ping %s\n", r.NetNS, peer)
		fmt.Fprintf(w, "  ip netns exec %s ip addr show nsm0\n", r.NetNS)
		break
	}
	fmt.Fprintf(w, "  ip netns exec %s %s get connections --registry %s:7001 --credentials %s\n", dc.ns, d.o.Bin, dc.addr, filepath.Join(dc.data, "admin"))
	fmt.Fprintf(w, "  ip netns exec %s %s get endpoints --registry %s:7001 --credentials %s\n", dc.ns, d.o.Bin, dc.addr, filepath.Join(dc.data, "admin"))
	fmt.Fprintf(w, "  ip netns exec %s ip link    # the gateway's veths and WireGuard device\n", dc.ns)
	fmt.Fprintf(w, "  ls %s    # each program's log\n", d.dir)
	names := d.names()
	slices.Sort(names)
	fmt.Fprintf(w, "  namespaces: %s\n", strings.Join(names, " "))
}
