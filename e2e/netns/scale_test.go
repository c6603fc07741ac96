package netns

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/proxy/proxypb"
)

// BenchmarkNetnsScale: many vWires (1,000; BENCH=quick 100) live at once
// between one pair of gateways: the rate they are set up at, set-up latency
// with them all live, what each costs the gateways (RSS, kernel objects),
// the client's domain SIGKILLed and restarted under them, and closing them
// all.
func BenchmarkNetnsScale(b *testing.B) {
	w := benchWorld(b)
	n := 1000
	if quick() {
		n = 100
	}
	a, bh := w.domains["a.example"], w.domains["b.example"]
	profiles := os.Getenv("VWIRE_PROFILES") // see BenchmarkNetnsSetup
	// Nobody refreshes these connections: they must outlive the run.
	for _, h := range []*host{a, bh} {
		extra := []string{"--connection-lifetime", "1h"}
		if profiles != "" {
			extra = append(extra, "--debug-listen", h.addr+":6060")
		}
		w.restart(h, extra...)
	}
	nsc := w.gatewayClient("a.example")
	ns := w.fresh("k")
	// The hosts' own IPv6 link-local addresses, and their routes, come
	// after duplicate address detection: counted before, they would
	// count as the vWires'.
	for _, h := range []*host{a, bh} {
		for deadline := time.Now().Add(10 * time.Second); run(b, "ip", "-n", h.ns, "-6", "addr", "show", "tentative") != ""; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("%s's IPv6 addresses still tentative after 10 s", h.name)
			}
		}
	}
	objA, objB := kernelObjects(b, a.ns), kernelObjects(b, bh.ns)
	rssA, rssB := e2e.RSS(b, a.proc.Cmd.Process.Pid), e2e.RSS(b, bh.proc.Cmd.Process.Pid)

	conns := make([]*proxypb.Connection, n)
	begin := time.Now()
	parallel(8, n, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, _, err := pingable(ctx, nsc, client.Options{Service: "svc@b.example", NetNS: ns, Interface: fmt.Sprintf("vk%d", i)})
		if err != nil {
			b.Errorf("vWire %d of %d: %v", i, n, err)
		}
		conns[i] = conn
	})
	fill := time.Since(begin)
	if b.Failed() {
		b.FailNow()
	}
	b.ReportMetric(float64(n)/fill.Seconds(), "fill-setups/s")
	b.ReportMetric(float64(n), "vwires")

	// Set-up latency with them all live: more, one after another, each
	// closed. (The domains' own profiles are not taken meanwhile: one
	// taken by Go's profiler doubled their p99. The machine's, by perf,
	// is.)
	stop := func() {}
	if profiles != "" {
		stop = profileMachine(b, filepath.Join(profiles, fmt.Sprintf("setup-%d-live-machine.txt", n)), []*host{a, bh})
	}
	times, _, _ := setups(b, nsc, "svc@b.example", ns, "vl", 50, 1)
	stop()
	b.ReportMetric(ms(times[len(times)/2]), "loaded-p50-ms")
	b.ReportMetric(ms(times[len(times)*99/100]), "loaded-p99-ms")

	// Every one of them passes traffic; how long pinging them all takes
	// is the yardstick of the restart row (its all-pass time is measured
	// the same way).
	pinged := time.Now()
	if err := pingAll(ns, conns, 10*time.Second); err != nil {
		b.Fatalf("after the last set-up: %v", err)
	}
	b.ReportMetric(ms(time.Since(pinged)), "ping-all-ms")
	// What each costs: the RSS of each domain's process (its gateway's
	// devices and state), and the links, routes, rules and nftables
	// objects in its namespace.
	b.ReportMetric(float64(e2e.RSS(b, a.proc.Cmd.Process.Pid)-rssA)/float64(n)/1024, "client-rss-KB/vwire")
	b.ReportMetric(float64(e2e.RSS(b, bh.proc.Cmd.Process.Pid)-rssB)/float64(n)/1024, "endpoint-rss-KB/vwire")
	live := kernelObjects(b, a.ns)
	for kind, count := range live {
		b.ReportMetric(float64(count-objA[kind])/float64(n), "client-"+kind+"/vwire")
	}
	liveB := kernelObjects(b, bh.ns)
	for kind, count := range liveB {
		b.ReportMetric(float64(count-objB[kind])/float64(n), "endpoint-"+kind+"/vwire")
	}

	// The client's domain (its proxy and gateway) SIGKILLed and started
	// again: every vWire carries traffic again, and nothing is programmed
	// twice.
	killed := time.Now()
	a.proc.Signal(syscall.SIGKILL)
	w.start(a)
	restart := time.Since(killed)
	profiled := func() {}
	if profiles != "" {
		profiled = profileDomains(b, profiles, fmt.Sprintf("restart-%d-live", n), a)
	}
	if err := pingAll(ns, conns, time.Minute); err != nil {
		b.Fatalf("after the client's domain restarted: %v", err)
	}
	b.ReportMetric(ms(restart), "restart-ms")
	b.ReportMetric(ms(time.Since(killed)), "restart-all-pass-ms")
	// (The WireGuard device died with the process: its new one's IPv6
	// link-local address, and the route to it, come after DAD.)
	if again, ok := objectsBecome(b, 10*time.Second, []map[string]int{live}, a.ns); !ok {
		b.Errorf("the restarted gateway's namespace: %v, before the kill %v", again, live)
	}
	profiled()

	// Closing them all, 8 at a time, until both hosts are as before (the
	// tunnel's grace passed).
	nsc = w.gatewayClient("a.example") // the restarted gateway's socket
	if profiles != "" {
		defer profileDomains(b, profiles, fmt.Sprintf("close-%d", n), a, bh)()
	}
	begin = time.Now()
	parallel(8, n, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := nsc.Close(ctx, conns[i]); err != nil {
			b.Errorf("closing vWire %d: %v", i, err)
		}
	})
	b.ReportMetric(time.Since(begin).Seconds(), "close-all-s")
	// (But the MSS clamping table, which a gateway keeps while it runs.)
	objA["nft"], objB["nft"] = live["nft"], liveB["nft"]
	if got, ok := objectsBecome(b, time.Minute, []map[string]int{objA, objB}, a.ns, bh.ns); !ok {
		b.Fatalf("a minute after closing: a and b have %v, before: %v", got, []map[string]int{objA, objB})
	}
}

// objectsBecome polls the kernel objects of namespaces nss until they are
// want, for up to within; it returns what they were last.
func objectsBecome(t testing.TB, within time.Duration, want []map[string]int, nss ...string) ([]map[string]int, bool) {
	for deadline := time.Now().Add(within); ; time.Sleep(100 * time.Millisecond) {
		var got []map[string]int
		for _, ns := range nss {
			got = append(got, kernelObjects(t, ns))
		}
		if same := fmt.Sprint(got) == fmt.Sprint(want); same || time.Now().After(deadline) {
			return got, same
		}
	}
}

// parallel runs do(0..n-1) on workers goroutines.
func parallel(workers, n int, do func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				do(i)
			}
		})
	}
	wg.Wait()
}

// pingAll waits until every connection's peer answers a ping from ns, a
// prober per connection, within timeout in all.
func pingAll(ns string, conns []*proxypb.Connection, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var mu sync.Mutex
	var failed []string
	parallel(8, len(conns), func(i int) {
		peer, err := client.Peer(conns[i])
		if err == nil {
			err = pingUntil(ns, peer, deadline)
		}
		if err != nil {
			mu.Lock()
			failed = append(failed, fmt.Sprintf("vWire %d: %v", i, err))
			mu.Unlock()
		}
	})
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d vWires pass no ping: %s", len(failed), len(conns), strings.Join(failed[:min(5, len(failed))], "; "))
	}
	return nil
}

// pingUntil pings peer from ns until it answers or deadline passes.
func pingUntil(ns string, peer netip.Addr, deadline time.Time) error {
	p, err := client.NewProber(ns, peer)
	if err != nil {
		return err
	}
	defer p.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := p.Ping(ctx, peer)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// kernelObjects counts what a gateway host has programmed: links, routes
// (both families, every table) and policy rules.
func kernelObjects(t testing.TB, ns string) map[string]int {
	count := func(args ...string) int {
		n := 0
		for _, l := range strings.Split(run(t, "ip", append([]string{"-n", ns}, args...)...), "\n") {
			if strings.TrimSpace(l) != "" {
				n++
			}
		}
		return n
	}
	return map[string]int{
		"links":  count("-o", "link", "show"),
		"routes": count("-4", "route", "show", "table", "all") + count("-6", "route", "show", "table", "all"),
		"rules":  count("-4", "rule", "show") + count("-6", "rule", "show"),
		// Tables, chains and rules: what nft -a lists with a handle.
		"nft": strings.Count(run(t, "ip", "netns", "exec", ns, "nft", "-a", "list", "ruleset"), "# handle "),
	}
}
