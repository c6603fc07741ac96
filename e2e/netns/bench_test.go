package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/internal/proc"
	"github.com/vwire/vwire/proxy/proxypb"
)

// The data-plane benchmarks (`make bench` runs them with -benchtime 1x;
// BENCH=quick makes them short). Each builds its own two domains.

func quick() bool { return os.Getenv("BENCH") == "quick" }

// benchWorld is two federated domains with svc (IP) and l2 (Ethernet)
// applied in b, an endpoint of each in b and one of svc in a.
func benchWorld(b *testing.B) *world {
	e2e.RequireRoot(b, "ping", "iperf3", "nft")
	w := newWorld(b, vwireBin, "a.example", "b.example")
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	for _, d := range []string{"a.example", "b.example"} {
		w.cli(d, "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	}
	w.endpoint("b.example", "ep1", "--service", "svc", "--cidr", "172.16.0.0/20", "--netns", w.workload("eb"))
	w.endpoint("a.example", "ep-local", "--service", "svc", "--cidr", "172.17.0.0/20", "--netns", w.workload("ea"))
	w.endpoint("b.example", "l2-1", "--service", "l2", "--payload", "ETHERNET", "--cidr", "172.18.0.0/20", "--netns", w.workload("el"))
	w.endpoint("b.example", "l2p-1", "--service", "l2plain", "--payload", "ETHERNET", "--cidr", "172.19.0.0/20", "--netns", w.workload("ep"))
	return w
}

// gatewayClient talks to domain d's gateway as a workload does.
func (w *world) gatewayClient(d string) proxypb.NetworkServiceClient {
	conn, err := grpc.NewClient("unix://"+filepath.Join(w.domains[d].data, "gateway.sock"), grpc.WithTransportCredentials(handover.HandNS(nil))) // requests name their namespace
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { conn.Close() })
	return proxypb.NewNetworkServiceClient(conn)
}

// pingable asks for a vWire and waits until its peer answers a ping from
// ns; it returns the connection and the time from request to reply.
func pingable(ctx context.Context, nsc proxypb.NetworkServiceClient, o client.Options) (*proxypb.Connection, time.Duration, error) {
	begin := time.Now()
	conn, err := client.Request(ctx, nsc, o, "")
	if err != nil {
		return nil, 0, err
	}
	if err := client.AwaitPeer(ctx, o.NetNS, conn); err != nil {
		return conn, 0, err
	}
	return conn, time.Since(begin), nil
}

// BenchmarkNetnsSetup: request to pingable, cross-domain and (yardstick)
// to an endpoint of the client's own domain, one client after another,
// then setups per second with eight clients at once.
func BenchmarkNetnsSetup(b *testing.B) {
	w := benchWorld(b)
	n := 200
	if quick() {
		n = 20
	}
	profiles := os.Getenv("VWIRE_PROFILES")
	if profiles != "" {
		for _, h := range []*host{w.domains["a.example"], w.domains["b.example"]} {
			w.restart(h, "--debug-listen", h.addr+":6060")
		}
	}
	for k, tc := range []struct {
		name, service string
		clients       int
	}{{"cross-domain", "svc@b.example", 1}, {"local", "svc", 1}, {"cross-domain/clients=8", "svc@b.example", 8}} {
		b.Run(tc.name, func(b *testing.B) {
			if profiles != "" && tc.clients == 8 {
				done := profileDomains(b, profiles, "setup-8-clients", w.domains["a.example"], w.domains["b.example"])
				defer done()
			}
			cpu0 := readCPUTimes(b)
			times, closes, wall := setups(b, w.gatewayClient("a.example"), tc.service, w.fresh(fmt.Sprintf("s%d", k)), "vb", n, tc.clients)
			cpu1 := readCPUTimes(b)
			// What bounds a rate on this machine: its CPU time per set-up
			// and close (both gateways, the kernel, the clients), and how
			// much of the CPU was left.
			b.ReportMetric(cpu1.busyMS(cpu0)/float64(n), "cpu-ms/setup")
			b.ReportMetric(cpu1.share(cpu0, "idle"), "idle-%")
			b.ReportMetric(ms(times[len(times)/2]), "p50-ms")
			b.ReportMetric(ms(closes[len(closes)/2]), "close-p50-ms")
			b.ReportMetric(ms(times[len(times)*99/100]), "p99-ms")
			b.ReportMetric(float64(len(times))/wall.Seconds(), "setups/s")
			b.ReportMetric(float64(len(times)), "requests")
		})
	}
}

// profileDomains takes a CPU profile of the hosts' domain processes (3 s,
// from their --debug-listen) while the caller loads them, with where their
// goroutines waited on contended locks in those 3 s, and once done is
// called their allocations since start, and writes each as the top of
// `go tool pprof` into dir as NAME-DOMAIN-{cpu,mutex,allocs}.txt; and the
// whole machine's until done, as NAME-machine.txt: the profiles kept with
// the bench numbers.
func profileDomains(b *testing.B, dir, name string, hosts ...*host) (done func()) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	// Profiles are fetched during the phase and read by pprof after it,
	// so that pprof's own work is in none of them.
	var mu sync.Mutex
	raws := map[string]string{} // raw profile: where its top goes
	fetch := func(h *host, path, kind string) {
		raw := filepath.Join(b.TempDir(), kind+".pb.gz")
		resp, err := clientIn(h.ns).Get("http://" + h.addr + ":6060" + path)
		if err != nil {
			b.Errorf("profile of %s: %v", h.name, err)
			return
		}
		defer resp.Body.Close()
		f, _ := os.Create(raw)
		io.Copy(f, resp.Body)
		f.Close()
		mu.Lock()
		raws[raw] = filepath.Join(dir, fmt.Sprintf("%s-%s-%s.txt", name, h.name, kind))
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for _, h := range hosts {
		wg.Go(func() { fetch(h, "/debug/pprof/profile?seconds=3", "cpu") })
		wg.Go(func() { fetch(h, "/debug/pprof/mutex?seconds=3", "mutex") })
	}
	machine := profileMachine(b, filepath.Join(dir, name+"-machine.txt"), hosts)
	return func() {
		machine()
		wg.Wait()
		for _, h := range hosts {
			fetch(h, "/debug/pprof/allocs", "allocs")
		}
		for raw, out := range raws {
			top, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount", "60", raw).CombinedOutput()
			if err != nil {
				b.Errorf("go tool pprof on %s: %v\n%s", out, err, top)
				continue
			}
			os.WriteFile(out, top, 0o644)
		}
	}
}

// profileMachine starts recording where the whole machine's CPU goes
// (perf, system-wide: the domains, the kernel, the clients, idle) until
// stop, which writes it to path: shares by process, then by symbol. A
// domain's own CPU profile shows its share alone; this shows what bounds
// the machine.
func profileMachine(b *testing.B, path string, hosts []*host) (stop func()) {
	write := func(text []byte) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Error(err)
		} else if err := os.WriteFile(path, text, 0o644); err != nil {
			b.Error(err)
		}
	}
	if _, err := exec.LookPath("perf"); err != nil {
		b.Logf("no machine-wide profile: perf is not installed (Debian: linux-perf)")
		write([]byte("not recorded: perf is not installed (Debian: linux-perf)\n"))
		return func() {}
	}
	dir := b.TempDir()
	data, ctl, ack := filepath.Join(dir, "perf.data"), filepath.Join(dir, "ctl"), filepath.Join(dir, "ack")
	var out bytes.Buffer
	// perf takes a while to start recording the whole machine: it starts
	// with its events off, and the phase begins once it says they are on.
	rec := exec.Command("perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-a", "-g", "-D", "-1", "--control", "fifo:"+ctl+","+ack, "-o", data)
	rec.Stdout, rec.Stderr = &out, &out
	for _, f := range []string{ctl, ack} {
		if err := syscall.Mkfifo(f, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	// (Opened read-write, neither open waits for perf; a fifo takes a
	// read deadline.)
	c, err := os.OpenFile(ctl, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	a, err := os.OpenFile(ack, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	if err := rec.Start(); err != nil {
		b.Fatalf("perf record: %v", err)
	}
	a.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = c.WriteString("enable\n")
	if err == nil {
		_, err = a.Read(make([]byte, 8))
	}
	if err != nil {
		rec.Process.Kill()
		rec.Wait()
		b.Fatalf("perf record did not enable its events: %v\n%s", err, out.Bytes())
	}
	begin, cpu0 := time.Now(), readCPUTimes(b)
	return func() {
		cpu1 := readCPUTimes(b)
		rec.Process.Signal(os.Interrupt)
		if err := rec.Wait(); err != nil && !strings.Contains(err.Error(), "interrupt") {
			b.Errorf("perf record: %v\n%s", err, out.Bytes())
			return
		}
		text, err := machineReport(data, hosts, time.Since(begin), cpu0, cpu1)
		if err != nil {
			b.Error(err)
			return
		}
		write(text)
	}
}

// machineReport is what perf recorded in data over took, with /proc/stat's
// times before and after: the split of the CPU time, the shares by
// process (hosts' domains named) and by symbol.
func machineReport(data string, hosts []*host, took time.Duration, cpu0, cpu1 cpuTimes) ([]byte, error) {
	names := map[string]string{"0": "swapper: idle, and the softirqs it met"}
	for _, h := range hosts {
		names[strconv.Itoa(h.proc.Cmd.Process.Pid)] = h.name + "'s vwire domain"
	}
	samples, err := exec.Command("perf", "script", "-i", data, "-F", "pid,comm").Output()
	if err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	byProcess, total := map[string]int{}, 0
	for l := range strings.Lines(string(samples)) {
		f := strings.Fields(l) // comm (may hold spaces), pid
		if len(f) < 2 {
			continue
		}
		pid, comm := f[len(f)-1], strings.Join(f[:len(f)-1], " ")
		name := names[pid]
		if name == "" {
			name = comm
		}
		byProcess[name]++
		total++
	}
	var text bytes.Buffer
	fmt.Fprintf(&text, "perf record -e cpu-clock -a: %.1f s, %d samples on %d CPUs. /proc/stat over the same time: %.1f %% idle, %.1f %% in the kernel, %.1f %% in user space.\n\nby process (others by command name; trust /proc/stat's idle above: perf samples an idle CPU less often):\n",
		took.Seconds(), total, runtime.NumCPU(), cpu1.share(cpu0, "idle"), cpu1.share(cpu0, "kernel"), cpu1.share(cpu0, "user"))
	for _, name := range slices.SortedFunc(maps.Keys(byProcess), func(x, y string) int { return byProcess[y] - byProcess[x] }) {
		if pct := 100 * float64(byProcess[name]) / float64(max(total, 1)); pct >= 0.5 {
			fmt.Fprintf(&text, "%6.1f %%  %s\n", pct, name)
		}
	}
	report, err := exec.Command("perf", "report", "-i", data, "--stdio", "--children", "--sort", "sym", "-g", "none", "--percent-limit", "2").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w\n%s", err, report)
	}
	text.WriteString("\nby symbol, with what it calls (2 % and more; the idle loop's are idle):\n")
	for l := range strings.Lines(string(report)) {
		if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
			text.WriteString(l)
		}
	}
	return text.Bytes(), nil
}

// cpuTimes is the machine's CPU time so far (/proc/stat's first line), in
// ticks: user, nice, system, idle, iowait, irq, softirq, steal.
type cpuTimes [8]uint64

func readCPUTimes(b *testing.B) (t cpuTimes) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line)
	for i := range t {
		if i+1 < len(f) {
			t[i], _ = strconv.ParseUint(f[i+1], 10, 64)
		}
	}
	return t
}

// share is the percentage of the CPU time since before that went to
// kind: "user" (user, nice), "kernel" (system, irq, softirq) or "idle"
// (idle, iowait); steal counts in the whole only.
func (t cpuTimes) share(before cpuTimes, kind string) float64 {
	var d [8]float64
	var all float64
	for i := range t {
		d[i] = float64(t[i] - before[i])
		all += d[i]
	}
	var part float64
	switch kind {
	case "user":
		part = d[0] + d[1]
	case "kernel":
		part = d[2] + d[5] + d[6]
	case "idle":
		part = d[3] + d[4]
	}
	return 100 * part / max(all, 1)
}

// busyMS is the CPU time since before that this machine spent working
// (user, nice, system, irq, softirq: not idle, iowait or what the
// hypervisor stole), in ms of one CPU (/proc/stat counts in USER_HZ, 100
// a second on Linux).
func (t cpuTimes) busyMS(before cpuTimes) float64 {
	var busy uint64
	for _, i := range []int{0, 1, 2, 5, 6} {
		busy += t[i] - before[i]
	}
	return float64(busy) * 10
}

// setups asks for n vWires to service into namespace ns (interfaces
// prefix0, prefix1, ...) from clients at once, each closed once its peer
// answers a ping; it returns each one's time from request to reply and
// each close's, sorted, and the time all took. A failed set-up or close
// fails b.
func setups(b *testing.B, nsc proxypb.NetworkServiceClient, service, ns, prefix string, n, clients int) (times, closes []time.Duration, wall time.Duration) {
	var mu sync.Mutex
	begin := time.Now()
	parallel(clients, n, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, took, err := pingable(ctx, nsc, client.Options{Service: service, NetNS: ns, Interface: fmt.Sprintf("%s%d", prefix, i)})
		var closing time.Duration
		if conn != nil {
			t0 := time.Now()
			_, cerr := nsc.Close(ctx, conn)
			closing = time.Since(t0)
			if err == nil && cerr != nil {
				err = fmt.Errorf("close: %w", cerr)
			}
		}
		if err != nil {
			b.Errorf("request %d: %v", i, err)
			return
		}
		mu.Lock()
		times = append(times, took)
		closes = append(closes, closing)
		mu.Unlock()
	})
	wall = time.Since(begin)
	if len(times) < n {
		b.FailNow()
	}
	slices.Sort(times)
	slices.Sort(closes)
	return times, closes, wall
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkNetnsThroughput: TCP throughput (iperf3) and ping RTT over a
// WireGuard vWire and a VXLAN vWire, beside the same wireguard-go build as
// a bare tunnel between the two hosts, a bare kernel VXLAN between them,
// and a raw veth pair between two namespaces.
func BenchmarkNetnsThroughput(b *testing.B) {
	w := benchWorld(b)
	a, bh := w.domains["a.example"], w.domains["b.example"]
	seconds := "5"
	if quick() {
		seconds = "1"
	}
	measure := func(b *testing.B, from, to, addr string) {
		b.Helper()
		// A second of traffic first, thrown away: the first row after the
		// world starts measured low (its domains still settling), and
		// every row should meet the same warm machine.
		if _, err := iperf(from, to, addr, "1"); err != nil {
			b.Fatal(err)
		}
		rtt, err := rttOf(from, addr)
		if err != nil {
			b.Fatal(err)
		}
		gbps, err := iperf(from, to, addr, seconds)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(gbps, "Gbit/s")
		b.ReportMetric(ms(rtt), "rtt-ms")
	}
	overVWire := func(service string) func(*testing.B) {
		return func(b *testing.B) {
			ns := w.fresh("t")
			c := w.connect("a.example", service, ns)
			defer c.stop()
			measure(b, ns, epNamespace(b, w, c), c.Up.peer())
		}
	}
	b.Run("wireguard-vwire", overVWire("svc@b.example"))
	b.Run("wireguard-bare", func(b *testing.B) {
		bareWireGuard(b, w, bare{apart: true}, a.ns, bh.ns, a.addr, bh.addr)
		measure(b, a.ns, bh.ns, "100.64.0.2")
	})
	b.Run("wireguard-bare-one-process", func(b *testing.B) {
		bareWireGuard(b, w, bare{}, a.ns, bh.ns, a.addr, bh.addr)
		measure(b, a.ns, bh.ns, "100.64.0.2")
	})
	b.Run("wireguard-bare-behind-veth", func(b *testing.B) {
		x, y := bareWireGuard(b, w, bare{apart: true, behind: true}, a.ns, bh.ns, a.addr, bh.addr)
		measure(b, x, y, "100.68.1.2")
	})
	b.Run("ethernet-wireguard-vwire", overVWire("l2@b.example")) // encrypted, as by default
	b.Run("vxlan-vwire", overVWire("l2plain@b.example"))
	b.Run("vxlan-bare", func(b *testing.B) {
		for _, h := range []struct{ ns, local, remote, addr string }{{a.ns, a.addr, bh.addr, "100.66.0.1/30"}, {bh.ns, bh.addr, a.addr, "100.66.0.2/30"}} {
			run(b, "ip", "-n", h.ns, "link", "add", "vxbare", "type", "vxlan", "id", "4242", "local", h.local, "remote", h.remote, "dstport", "4790", "dev", "eth0")
			b.Cleanup(func() { run(b, "ip", "-n", h.ns, "link", "del", "vxbare") })
			run(b, "ip", "-n", h.ns, "addr", "add", h.addr, "dev", "vxbare")
			run(b, "ip", "-n", h.ns, "link", "set", "vxbare", "up")
		}
		measure(b, a.ns, bh.ns, "100.66.0.2")
	})
	b.Run("veth", func(b *testing.B) {
		x, y := w.fresh("vx"), w.fresh("vy")
		run(b, "ip", "link", "add", "vwbx"+w.tag, "netns", x, "type", "veth", "peer", "name", "vwby"+w.tag, "netns", y)
		run(b, "ip", "-n", x, "addr", "add", "100.65.0.1/30", "dev", "vwbx"+w.tag)
		run(b, "ip", "-n", y, "addr", "add", "100.65.0.2/30", "dev", "vwby"+w.tag)
		run(b, "ip", "-n", x, "link", "set", "vwbx"+w.tag, "up")
		run(b, "ip", "-n", y, "link", "set", "vwby"+w.tag, "up")
		measure(b, x, y, "100.65.0.2")
	})
}

// epNamespace is the endpoint namespace a connection ended in.
func epNamespace(b *testing.B, w *world, c *connection) string {
	switch c.Up.Connection.Endpoint {
	case "ep1@b.example":
		return w.nsName("eb")
	case "l2-1@b.example":
		return w.nsName("el")
	case "l2p-1@b.example":
		return w.nsName("ep")
	}
	b.Fatalf("unexpected endpoint %q", c.Up.Connection.Endpoint)
	return ""
}

// fresh makes a workload namespace with a name not used before: a
// sub-benchmark runs -count times in one world.
func (w *world) fresh(prefix string) string {
	freshN++
	return w.workload(fmt.Sprintf("%s%d", prefix, freshN))
}

var freshN int

// nsName names a namespace that workload made earlier.
func (w *world) nsName(suffix string) string { return "vn" + w.tag + suffix }

// bare is how a bare WireGuard yardstick is set up.
type bare struct {
	// apart: each device runs in a process of its own, as each gateway
	// does (and as the wireguard-go program does, one per device): the
	// test binary again, in wireGuardHelper; otherwise both run in this
	// process.
	apart bool
	// behind: each host also routes to a workload namespace behind it on
	// a veth (100.68.0.2 behind a, 100.68.1.2 behind b), as a gateway does.
	behind bool
}

// bareWireGuard joins two host namespaces with wireguard-go devices (the
// build the gateway embeds), 100.64.0.1 and .2, until the benchmark ends,
// as how says; it returns the workload namespaces of how.behind.
func bareWireGuard(b *testing.B, w *world, how bare, nsA, nsB, addrA, addrB string) (wlA, wlB string) {
	type side struct {
		ns, underlay, tunnel, name, workload, behind string
		key                                          wgtypes.Key
	}
	sides := []*side{{ns: nsA, underlay: addrA, tunnel: "100.64.0.1"}, {ns: nsB, underlay: addrB, tunnel: "100.64.0.2"}}
	for i, s := range sides {
		s.key, _ = wgtypes.GeneratePrivateKey()
		s.name = fmt.Sprintf("wgb%d%s", i, s.ns[2:8])
		if how.behind {
			s.workload, s.behind = w.fresh("wb"), fmt.Sprintf("100.68.%d.0/24", i)
			host := fmt.Sprintf("vwbw%d%s", i, w.tag)
			run(b, "ip", "link", "add", host, "netns", s.ns, "type", "veth", "peer", "name", "eth0", "netns", s.workload)
			b.Cleanup(func() { exec.Command("ip", "-n", s.ns, "link", "del", host).Run() })
			run(b, "ip", "-n", s.ns, "addr", "add", fmt.Sprintf("100.68.%d.1/24", i), "dev", host)
			run(b, "ip", "-n", s.workload, "addr", "add", fmt.Sprintf("100.68.%d.2/24", i), "dev", "eth0")
			run(b, "ip", "-n", s.ns, "link", "set", host, "up")
			run(b, "ip", "-n", s.workload, "link", "set", "eth0", "up")
			run(b, "ip", "-n", s.workload, "route", "add", "default", "via", fmt.Sprintf("100.68.%d.1", i))
			run(b, "ip", "netns", "exec", s.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		}
	}
	for i, s := range sides {
		peer := sides[1-i]
		h := wireGuardHelper{NS: s.ns, Name: s.name, Key: s.key, Peer: peer.key.PublicKey(),
			PeerAt: peer.underlay + ":51900", PeerTunnel: peer.tunnel, PeerBehind: peer.behind}
		if how.apart {
			spec, _ := json.Marshal(h)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), wireGuardHelperEnv+"="+string(spec))
			p, _, err := proc.Start(context.Background(), cmd, 10*time.Second, func(string) {}, func(l string) bool { return l == "ready" })
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Stop(5 * time.Second) })
		} else {
			dev, err := h.start()
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { dev.Close() })
		}
		run(b, "ip", "-n", s.ns, "addr", "add", s.tunnel+"/32", "dev", s.name)
		run(b, "ip", "-n", s.ns, "route", "add", peer.tunnel+"/32", "dev", s.name)
		if how.behind {
			run(b, "ip", "-n", s.ns, "route", "add", peer.behind, "dev", s.name)
		}
	}
	return sides[0].workload, sides[1].workload
}

// wireGuardHelperEnv, when set, makes the test binary a wireGuardHelper:
// TestMain runs it instead of the tests.
const wireGuardHelperEnv = "VWIRE_BENCH_WIREGUARD"

// wireGuardHelper is one side of the bare tunnel: a wireguard-go device
// in a namespace with one peer.
type wireGuardHelper struct {
	NS, Name, PeerAt, PeerTunnel string
	PeerBehind                   string // a prefix routed behind the peer, or ""
	Key, Peer                    wgtypes.Key
}

func (h wireGuardHelper) start() (dev *kernel.WireGuard, err error) {
	err = kernel.Do(h.NS, func() (err error) {
		dev, err = kernel.NewWireGuard(h.Name, h.Key, 51900, 1440, slog.New(slog.DiscardHandler))
		return err
	})
	if err != nil {
		return nil, err
	}
	allowed := []netip.Prefix{netip.MustParsePrefix(h.PeerTunnel + "/32")}
	if h.PeerBehind != "" {
		allowed = append(allowed, netip.MustParsePrefix(h.PeerBehind))
	}
	if err := dev.SetPeer(h.Peer, netip.MustParseAddrPort(h.PeerAt), allowed); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// runWireGuardHelper serves the device that spec describes until
// interrupted.
func runWireGuardHelper(spec string) int {
	var h wireGuardHelper
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dev, err := h.start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer dev.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	fmt.Println("ready")
	<-sig
	return 0
}

// rttOf is the median of 20 pings from ns to addr.
func rttOf(ns, addr string) (time.Duration, error) {
	to := netip.MustParseAddr(addr)
	p, err := client.NewProber(ns, to)
	if err != nil {
		return 0, err
	}
	defer p.Close()
	var rtts []time.Duration
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		rtt, err := p.Ping(ctx, to)
		cancel()
		if err != nil {
			return 0, fmt.Errorf("ping %s from %s: %w", addr, ns, err)
		}
		rtts = append(rtts, rtt)
		time.Sleep(10 * time.Millisecond)
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	return rtts[len(rtts)/2], nil
}

// iperf runs an iperf3 TCP test from ns to the server it starts in srvNS
// on addr and returns the receiver's rate in Gbit/s.
func iperf(ns, srvNS, addr, seconds string) (float64, error) {
	srv := inNS(srvNS, "iperf3", "-s", "-1", "-B", addr)
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	out, err := inNS(ns, "iperf3", "-J", "-c", addr, "-t", seconds, "--connect-timeout", "3000").Output()
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %v\n%s", addr, err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3 to %s printed no rate: %v\n%s", addr, err, out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// BenchmarkNetnsHeal: the data-path gap after SIGKILL and restart of the
// client's domain (its proxy and gateway: one process) and of the
// endpoint's, from the kill to the first ping through the vWire that
// passes again; `vwire connect` heals what the restart does not.
func BenchmarkNetnsHeal(b *testing.B) {
	w := benchWorld(b)
	ns := w.workload("h")
	c := w.connect("a.example", "svc@b.example", ns, "--probe-interval", "100ms")
	peer := netip.MustParseAddr(c.Up.peer())
	p, err := client.NewProber(ns, peer)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for _, d := range []struct{ name, domain string }{{"client-domain", "a.example"}, {"endpoint-domain", "b.example"}} {
		b.Run(d.name, func(b *testing.B) {
			h := w.domains[d.domain]
			// A vWire in its steady state: it passes, and has for a second.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := p.Ping(ctx, peer)
			cancel()
			if err != nil {
				b.Fatalf("no ping through the vWire before killing %s: %v", d.domain, err)
			}
			time.Sleep(time.Second)
			killed := time.Now()
			h.proc.Signal(syscall.SIGKILL)
			w.start(h)
			restart := time.Since(killed)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				_, err := p.Ping(ctx, peer)
				cancel()
				if err == nil {
					break
				}
				if time.Since(killed) > time.Minute {
					b.Fatalf("no ping through the vWire a minute after killing %s", d.domain)
				}
			}
			b.ReportMetric(ms(time.Since(killed)), "gap-ms")
			b.ReportMetric(ms(restart), "restart-ms")
		})
	}
	// The proxy alone: the endpoint is behind a node of b that runs its own
	// gateway, so killing b's domain kills its proxy and nothing of the
	// path. The gap is the longest run of failed probes from the kill until
	// a second after the restart.
	b.Run("proxy", func(b *testing.B) {
		os.WriteFile(filepath.Join(w.dir, "svc2.yaml"), []byte("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata:\n  name: svc2\nspec:\n  payload: IP\n"), 0o600)
		w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc2.yaml"))
		node := w.gatewayNode("b.example", fmt.Sprintf("p%d", freshN), fmt.Sprintf("10.99.0.%d", 20+freshN))
		freshN++
		e2e.StartVwire(b, "ip", nil, "netns", "exec", node.ns, w.bin, "endpoint", "--name", "ep-"+node.name, "--service", "svc2",
			"--cidr", "172.19.0.0/24", "--netns", w.fresh("pe"), "--gateway", "unix://"+filepath.Join(node.data, "gateway.sock"))
		ns := w.fresh("ph")
		c := w.connect("a.example", "svc2@b.example", ns, "--probe-interval", "100ms")
		defer c.stop()
		peer := netip.MustParseAddr(c.Up.peer())
		p, err := client.NewProber(ns, peer)
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		h := w.domains["b.example"]
		killed := time.Now()
		h.proc.Signal(syscall.SIGKILL)
		done := make(chan time.Duration)
		go func() { w.start(h); done <- time.Since(killed) }()
		var restart, worst, down time.Duration
		var failedSince time.Time
		for restart == 0 || time.Since(killed) < restart+time.Second {
			select {
			case restart = <-done:
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			_, err := p.Ping(ctx, peer)
			cancel()
			switch {
			case err != nil && failedSince.IsZero():
				failedSince = time.Now()
			case err == nil && !failedSince.IsZero():
				down, failedSince = time.Since(failedSince), time.Time{}
				worst = max(worst, down)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !failedSince.IsZero() {
			b.Fatalf("the vWire through b2's gateway stopped when b's proxy was killed, and did not come back")
		}
		b.ReportMetric(ms(worst), "gap-ms")
		b.ReportMetric(ms(restart), "restart-ms")
	})
}
