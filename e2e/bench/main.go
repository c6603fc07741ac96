// Command bench runs vwire's benchmarks (`make bench`; BENCH=quick for a
// smoke run of a minute or two that only prints), each several times, and
// prints one table
// — metric, vwire, yardstick, ratio, target, unit, method — with the median
// and the range of the runs. It writes the table with the machine's
// description to docs/benchmarks.md and the raw `go test -bench` output,
// which benchstat reads, to docs/benchmarks.txt. The table is a
// measurement, not a gate: a row that misses its target says so.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// run is one `go test -bench` invocation.
type run struct {
	pkg, pattern string
	benchtime    string // full mode
	quick        string // quick mode; empty: skipped
	quickPattern string // quick mode, when it runs less than pattern
}

var runs = []run{
	{"./e2e/sandbox/", "^Benchmark(BareMTLSRoundTrip|BareMTLSRelay|PeerFind|CrossDomainFind|LocalFind|LocalRequest|CrossDomainRequest|Fairness)$", "1000x", "100x", ""},
	{"./e2e/sandbox/", "^BenchmarkPeerMemory$", "1x", "1x", ""},
	{"./registry/", "^BenchmarkRegisterEndpoint$", "1000x", "100x", ""},
	{"./registry/", "^BenchmarkFindScale$", "1000x", "50x", "^BenchmarkFindScale$/^endpoints=(1000|10000)$"}, // 100k takes a minute to fill
	{"./cmd/vwire/", "^BenchmarkDomainWarmStart$", "3x", "1x", ""},
	// Network namespaces, as root: each builds two domains; BENCH=quick
	// shortens what they do (20 set-ups, 1 s of iperf3, 100 live vWires).
	{"./e2e/netns/", "^BenchmarkNetns(Setup|Throughput|Heal|Scale|Observability)$", "1x", "1x", ""},
	// Docker: the compose deployments of e2e/compose (BENCH=quick: 20
	// set-ups, 1 s of iperf3).
	{"./e2e/compose/", "^BenchmarkContainers$", "1x", "1x", ""},
	// Kubernetes: Marsha's clusters of e2e/kind (BENCH=quick skips it:
	// CI runs make e2e-kind right after).
	{"./e2e/kind/", "^BenchmarkKindPodSetup$", "1x", "", ""},
}

// row is one line of the table: where its figure comes from, and its
// yardstick's.
type row struct {
	metric           string
	bench, unit      string
	yardBench, yUnit string // optional
	target           string
	ok               func(v, yard float64) bool // nil: no target
	method           string
}

var rows = []row{
	{"cross-domain vWire set-up p50 (sandbox, 2 clients)", "CrossDomainRequest/clients=2", "p50-ms", "LocalRequest", "p50-ms", "", nil,
		"a's gateway asks for svc@b through both proxies, fake data plane; yardstick: the same request to a local endpoint"},
	{"cross-domain vWire set-up p99 (sandbox, 2 clients)", "CrossDomainRequest/clients=2", "p99-ms", "LocalRequest", "p99-ms", "< 20 ms",
		func(v, _ float64) bool { return v < 20 }, "as above"},
	{"cross-domain vWire set-up p99 (sandbox, 8 clients)", "CrossDomainRequest/clients=8", "p99-ms", "", "", "< 20 ms",
		func(v, _ float64) bool { return v < 20 }, "8 concurrent clients"},
	{"cross-domain set-ups per second (8 clients)", "CrossDomainRequest/clients=8", "requests/s", "", "", "≥ 200",
		func(v, _ float64) bool { return v >= 200 }, "requests completed / wall time"},
	{"cross-domain set-up p99 while another peer floods (sandbox)", "Fairness/flood", "p99-ms", "Fairness/quiet", "p99-ms", "< 50 ms",
		func(v, _ float64) bool { return v < 50 }, "a's set-ups to b, one after another, while c sends b up to 10,000 requests from 8 callers (default per-peer limits); all three domains in one process, so c's own side of the flood weighs on a too; yardstick: the same without the flood"},
	{"cross-domain find, the peer hop, p50", "PeerFind", "p50-ms", "BareMTLSRoundTrip", "p50-ms", "≤ 3× yardstick",
		func(v, y float64) bool { return v <= 3*y }, "a's proxy asks b's; yardstick: one bare mTLS gRPC round trip (unary health check)"},
	{"cross-domain find, end to end, p50", "CrossDomainFind", "p50-ms", "BareMTLSRoundTrip", "p50-ms", "≤ 3× yardstick",
		func(v, y float64) bool { return v <= 3*y }, "a client asks its own proxy for svc@b: two streaming hops"},
	{"cross-domain find, end to end, p50, vs two bare hops", "CrossDomainFind", "p50-ms", "BareMTLSRelay/stream", "p50-ms", "", nil,
		"yardstick: a client, a relay that passes the call on and its first answer back, and a health server, all over mTLS streams: the least two hops cost here (as unary calls: the next row)"},
	{"two bare mTLS hops, unary, p50", "BareMTLSRelay/unary", "p50-ms", "BareMTLSRoundTrip", "p50-ms", "", nil,
		"the relay above with unary calls; yardstick: one bare round trip"},
	{"registry find p99, 1,000 endpoints", "FindScale/endpoints=1000", "p99-ms", "", "", "", nil, "embedded etcd, services of 100, label selection, over mTLS"},
	{"registry find p99, 10,000 endpoints", "FindScale/endpoints=10000", "p99-ms", "", "", "", nil, "as above"},
	{"registry find p99, 100,000 endpoints", "FindScale/endpoints=100000", "p99-ms", "", "", "< 10 ms",
		func(v, _ float64) bool { return v < 10 }, "as above"},
	{"registry process memory, 1,000 endpoints", "FindScale/endpoints=1000", "rss-MB", "", "", "", nil, "VmRSS of the process holding registry and embedded etcd"},
	{"registry process memory, 10,000 endpoints", "FindScale/endpoints=10000", "rss-MB", "", "", "", nil, "as above"},
	{"registry process memory, 100,000 endpoints", "FindScale/endpoints=100000", "rss-MB", "", "", "", nil, "as above"},
	{"endpoint registration p50", "RegisterEndpoint", "p50-ms", "", "", "< 5 ms", func(v, _ float64) bool { return v < 5 }, "leased registration over mTLS, embedded etcd"},
	{"memory per federated peer domain, 100 peers", "PeerMemory/peers=100", "MB/peer", "", "", "< 1 MB", func(v, _ float64) bool { return v < 1 }, "live heap after GC / peers; peers simulated in-process"},
	{"memory per federated peer domain, 1,000 peers", "PeerMemory/peers=1000", "MB/peer", "", "", "< 1 MB", func(v, _ float64) bool { return v < 1 }, "as above"},
	{"cross-domain vWire set-up p50 (netns)", "NetnsSetup/cross-domain", "p50-ms", "NetnsSetup/local", "p50-ms", "≤ 15 ms",
		func(v, _ float64) bool { return v <= 15 },
		"request through a's gateway socket to the first ping that passes, 200 one after another, each closed; real gateways, WireGuard; yardstick: the same to an endpoint on the client's own gateway"},
	{"cross-domain vWire set-up p99 (netns)", "NetnsSetup/cross-domain", "p99-ms", "NetnsSetup/local", "p99-ms", "≤ 50 ms",
		func(v, _ float64) bool { return v <= 50 }, "as above (the WireGuard tunnel to the peer gateway outlives each vWire by --tunnel-grace: the first set-up makes it, the others find it)"},
	{"cross-domain set-ups per second (netns, 8 clients)", "NetnsSetup/cross-domain/clients=8", "setups/s", "NetnsSetup/cross-domain", "setups/s", "≥ 200",
		func(v, _ float64) bool { return v >= 200 }, "eight clients in one namespace, request to pingable and close, 200 in all; yardstick: one client"},
	{"machine CPU per cross-domain set-up and close (netns, 8 clients)", "NetnsSetup/cross-domain/clients=8", "cpu-ms/setup", "NetnsSetup/cross-domain", "cpu-ms/setup", "", nil,
		"the CPU time the whole machine spent (both gateways, the kernel, the clients; /proc/stat) while the row above ran, / its set-ups: the rate the machine's CPUs allow is their number × 1,000 / this; yardstick: one client"},
	{"machine idle while 8 clients set up (netns)", "NetnsSetup/cross-domain/clients=8", "idle-%", "NetnsSetup/cross-domain", "idle-%", "", nil,
		"share of the machine's CPU time left idle (/proc/stat) while eight clients set up; yardstick: one client"},
	{"cross-domain vWire close p50 (netns, 8 clients)", "NetnsSetup/cross-domain/clients=8", "close-p50-ms", "NetnsSetup/cross-domain", "close-p50-ms", "", nil,
		"the closes of the row above, each through both gateways, the client's side first, then the endpoint's (their veths go in the background); yardstick: one client"},
	{"cross-domain vWire set-up p50, 1,000 vWires live (netns)", "NetnsScale", "loaded-p50-ms", "NetnsSetup/cross-domain", "p50-ms", "≤ 15 ms",
		func(v, _ float64) bool { return v <= 15 }, "50 set-ups one after another, each closed, while 1,000 vWires between the same gateways are live; yardstick: the idle row"},
	{"cross-domain vWire set-up p99, 1,000 vWires live (netns)", "NetnsScale", "loaded-p99-ms", "NetnsSetup/cross-domain", "p99-ms", "≤ 50 ms",
		func(v, _ float64) bool { return v <= 50 }, "as above"},
	{"set-ups per second filling 1,000 live vWires (netns, 8 clients)", "NetnsScale", "fill-setups/s", "NetnsSetup/cross-domain/clients=8", "setups/s", "", nil,
		"request to pingable, none closed; yardstick: the same with each closed"},
	{"gateway RSS per live vWire, client's side", "NetnsScale", "client-rss-KB/vwire", "", "", "< 64 KB",
		func(v, _ float64) bool { return v < 64 }, "VmRSS growth of the client's vwire domain (its gateway, proxy and etcd: one process) from before the 1,000 vWires to after them, / 1,000"},
	{"gateway RSS per live vWire, endpoint's side", "NetnsScale", "endpoint-rss-KB/vwire", "", "", "< 64 KB",
		func(v, _ float64) bool { return v < 64 }, "as above, the endpoint's vwire domain"},
	{"kernel links per live vWire, each gateway", "NetnsScale", "client-links/vwire", "NetnsScale", "endpoint-links/vwire", "", nil, "in the gateway's namespace, growth / 1,000; yardstick: the endpoint's gateway"},
	{"kernel routes per live vWire, each gateway", "NetnsScale", "client-routes/vwire", "NetnsScale", "endpoint-routes/vwire", "", nil, "IPv4 and IPv6, every table (IPv4 vWires: their veth halves have IPv6 off, so no link-local or multicast routes of their own); as above"},
	{"kernel policy rules per live vWire, each gateway", "NetnsScale", "client-rules/vwire", "NetnsScale", "endpoint-rules/vwire", "", nil, "as above"},
	{"nftables objects per live vWire, each gateway", "NetnsScale", "client-nft/vwire", "NetnsScale", "endpoint-nft/vwire", "", nil, "tables, chains and rules in the gateway's namespace (the MSS clamping table is one for all vWires); as above"},
	{"all 1,000 vWires pass again after the client's domain restarts", "NetnsScale", "restart-all-pass-ms", "NetnsScale", "restart-ms", "< restart + 2000 ms",
		func(v, y float64) bool { return v < y+2000 }, "SIGKILL of the client's vwire domain to every one of the 1,000 vWires answering a ping again (WireGuard devices die with the process); yardstick: kill to ready again; the restarted gateway's links, routes and rules are checked to be as before the kill; the all-pass time includes pinging all 1,000 (the next row)"},
	{"pinging all 1,000 live vWires while they all pass", "NetnsScale", "ping-all-ms", "", "", "", nil,
		"how the restart row finds that all pass, timed once before the kill: 8 at a time, each from a new ICMP socket in the client's namespace, until its peer answers"},
	{"closing 1,000 live vWires", "NetnsScale", "close-all-s", "", "", "< 10 s",
		func(v, _ float64) bool { return v < 10 }, "8 clients closing them through the client's gateway; then both hosts are checked to be as before (the tunnel's grace passed)"},
	{"WireGuard vWire TCP throughput", "NetnsThroughput/wireguard-vwire", "Gbit/s", "NetnsThroughput/wireguard-bare", "Gbit/s", "≥ 95 % of yardstick",
		func(v, y float64) bool { return v >= 0.95*y }, "iperf3 -t 5, client namespace to endpoint namespace across two gateways (one process each); yardstick: the same wireguard-go build as a bare tunnel between the two hosts, one process per host as the gateways and the wireguard-go program run"},
	{"WireGuard vWire TCP throughput vs bare, both ends in one process", "NetnsThroughput/wireguard-vwire", "Gbit/s", "NetnsThroughput/wireguard-bare-one-process", "Gbit/s", "", nil,
		"yardstick: the bare tunnel with both wireguard-go devices in the benchmark's process (one Go runtime for both ends: faster on 2 cores, not a deployment anyone runs)"},
	{"WireGuard vWire TCP throughput vs bare, workloads behind veths", "NetnsThroughput/wireguard-vwire", "Gbit/s", "NetnsThroughput/wireguard-bare-behind-veth", "Gbit/s", "", nil,
		"yardstick: the bare tunnel (a process per end) with a workload namespace behind each host on a veth, routed by the host as a gateway routes: the vWire's hops without vwire"},
	{"WireGuard vWire TCP throughput vs raw veth", "NetnsThroughput/wireguard-vwire", "Gbit/s", "NetnsThroughput/veth", "Gbit/s", "", nil,
		"yardstick: a veth pair between two namespaces, no tunnel"},
	{"WireGuard vWire ping RTT", "NetnsThroughput/wireguard-vwire", "rtt-ms", "NetnsThroughput/wireguard-bare", "rtt-ms", "", nil, "median of 20 ICMP echoes from the client's namespace"},
	{"Ethernet vWire TCP throughput, inside WireGuard (the default across domains)", "NetnsThroughput/ethernet-wireguard-vwire", "Gbit/s", "NetnsThroughput/wireguard-bare", "Gbit/s", "≥ 90 % of yardstick",
		func(v, y float64) bool { return v >= 0.90*y }, "Ethernet-payload service: VXLAN between the gateways' inner addresses inside their WireGuard tunnel; yardstick: the bare wireguard-go tunnel of the WireGuard row"},
	{"VXLAN vWire TCP throughput (plainVxlan service)", "NetnsThroughput/vxlan-vwire", "Gbit/s", "NetnsThroughput/vxlan-bare", "Gbit/s", "≥ 95 % of yardstick",
		func(v, y float64) bool { return v >= 0.95*y }, "Ethernet-payload service marked plainVxlan: unencrypted across domains; yardstick: a bare kernel VXLAN between the two hosts"},
	{"VXLAN vWire ping RTT", "NetnsThroughput/vxlan-vwire", "rtt-ms", "NetnsThroughput/vxlan-bare", "rtt-ms", "", nil, "as for WireGuard"},
	{"heal gap, client's domain SIGKILLed and restarted", "NetnsHeal/client-domain", "gap-ms", "NetnsHeal/client-domain", "restart-ms", "< 1000 ms + restart",
		func(v, y float64) bool { return v < 1000+y }, "kill to the first ping through the vWire that passes (10 ms probes); vwire domain runs its gateway in its process, so its proxy goes too; yardstick: kill to ready again"},
	{"heal gap, endpoint's domain SIGKILLed and restarted", "NetnsHeal/endpoint-domain", "gap-ms", "NetnsHeal/endpoint-domain", "restart-ms", "< 1000 ms + restart",
		func(v, y float64) bool { return v < 1000+y }, "as above, for the endpoint's domain (its proxy and the gateway in its process)"},
	{"heal gap, endpoint domain's proxy alone SIGKILLed and restarted", "NetnsHeal/proxy", "gap-ms", "NetnsHeal/proxy", "restart-ms", "< 1000 ms + restart",
		func(v, y float64) bool { return v < 1000+y }, "the endpoint is behind another node's vwire gateway; kill b's domain (its proxy): the longest run of failed 10 ms probes until a second after the restart (0: the data path never noticed)"},
	{"cross-domain vWire set-up p99 (containers)", "Containers/setup", "p99-ms", "NetnsSetup/cross-domain", "p99-ms", "", nil,
		"as the netns row, 200 set-ups, between the compose deployments of e2e/compose (a's domain.yaml to c's production.yaml; the client app's namespace handed over the gateway's socket); yardstick: the netns row"},
	{"WireGuard vWire TCP throughput (containers)", "Containers/throughput", "Gbit/s", "NetnsThroughput/wireguard-vwire", "Gbit/s", "", nil,
		"iperf3 -t 5 between the example client's and endpoint's app containers, WireGuard between the gateway containers; yardstick: the netns row"},
	{"pod-to-pod cross-cluster vWire set-up (kind)", "KindPodSetup", "first-reply-ms", "KindPodSetup", "running-ms", "", nil,
		"a pod of public-k8s annotated with a vWire to an endpoint pod of private-k8s, kubectl apply to the first ping reply over it (kubectl exec, polled every 100 ms), median of 8; yardstick: the same pod without the annotation, kubectl apply to Running"},
	{"cross-domain vWire set-up p50, metrics and tracing on (netns)", "NetnsObservability", "on-p50-ms", "NetnsObservability", "off-p50-ms", "≤ 105 % of yardstick",
		func(v, y float64) bool { return v <= 1.05*y }, "both domains with --metrics-listen (scraped) and --otlp-endpoint (a receiver taking every span), set-ups one after another; four rounds of 50 each way, alternating which goes first; yardstick: the same domains without them"},
	{"cross-domain vWire set-up p99, metrics and tracing on (netns)", "NetnsObservability", "on-p99-ms", "NetnsObservability", "off-p99-ms", "", nil, "as above"},
	{"vwire domain RSS, metrics and tracing on", "NetnsObservability", "on-rss-MB", "NetnsObservability", "off-rss-MB", "< yardstick + 10 MB",
		func(v, y float64) bool { return v < y+10 }, "VmRSS of the client's vwire domain 2 s after ready, metrics scraped once, mean of the four rounds; yardstick: without them"},
	{"vwire domain idle RSS", "DomainWarmStart", "idle-rss-MB", "", "", "< 100 MB", func(v, _ float64) bool { return v < 100 }, "VmRSS 2 s after ready"},
	{"vwire domain warm start", "DomainWarmStart", "ready-ms", "", "", "< 2000 ms", func(v, _ float64) bool { return v < 2000 }, "exec to the ready line, existing data directory"},
}

func main() {
	var failed bool
	quick := flag.Bool("quick", os.Getenv("BENCH") == "quick", "a short smoke run (also BENCH=quick)")
	count := flag.Int("count", 3, "runs of each benchmark (1 with -quick)")
	from := flag.String("from", "", "render the table from this saved raw output instead of running")
	out := flag.String("out", "docs/benchmarks.md", "where to write the table (not in quick mode, which only prints it)")
	flag.Parse()
	if *quick {
		*count = 1
	}
	var raw bytes.Buffer
	if *from != "" {
		b, err := os.ReadFile(*from)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		raw.Write(b)
		runs = nil
	}
	for _, r := range runs {
		bt, pattern := r.benchtime, r.pattern
		if *quick && r.quick == "" {
			continue
		}
		if *quick {
			bt = r.quick
			if r.quickPattern != "" {
				pattern = r.quickPattern
			}
		}
		args := []string{"test", "-run", "^$", "-bench", pattern, "-benchtime", bt, "-count", strconv.Itoa(*count), r.pkg}
		fmt.Fprintf(os.Stderr, "go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		if !*quick && r.pkg == "./e2e/netns/" {
			// CPU and allocation profiles of the set-up path under load,
			// kept with the numbers.
			dir, _ := filepath.Abs(filepath.Join(filepath.Dir(*out), "profiles"))
			cmd.Env = append(os.Environ(), "VWIRE_PROFILES="+dir)
		}
		cmd.Stdout = io.MultiWriter(&raw, os.Stderr)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			// The others still run; the rows of this one say why not.
			fmt.Fprintf(os.Stderr, "bench: %s: %v\n", r.pkg, err)
			failed = true
		}
	}
	table := render(parse(raw.String()), reasons(raw.String()))
	fmt.Print(table)
	if !*quick { // a smoke run only prints: the recorded results stay as they are
		if err := write(*out, table, raw.String(), *quick, *count); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
	if failed {
		os.Exit(1)
	}
}

// reasons says why benchmarks reported nothing, by name: the first line
// a failed or skipped one printed that names an error, else one that says
// something failed, else its first.
func reasons(out string) map[string]string {
	why := map[string]string{}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		l = strings.TrimSpace(l)
		name, ok := strings.CutPrefix(l, "--- FAIL: Benchmark")
		verdict := "failed"
		if !ok {
			if name, ok = strings.CutPrefix(l, "--- SKIP: Benchmark"); !ok {
				continue
			}
			verdict = "skipped"
		}
		name, _, _ = strings.Cut(name, " ")
		// Its first line that names an error, else one that says
		// something failed, else its first message.
		var first, failure, errLine string
		for _, next := range lines[i+1:] {
			if !strings.HasPrefix(next, "    ") { // its indented messages end
				break
			}
			msg := strings.TrimSpace(next)
			if _, m, ok := strings.Cut(msg, ".go:"); ok {
				_, msg, _ = strings.Cut(m, ": ") // the line number
			}
			first = cmp.Or(first, msg)
			switch lower := strings.ToLower(msg); {
			case errLine == "" && strings.Contains(lower, "error"):
				errLine = msg
			case failure == "" && (strings.Contains(lower, "fail") || strings.Contains(lower, "refus")):
				failure = msg
			}
		}
		reason := verdict
		if msg := cmp.Or(errLine, failure, first); msg != "" {
			reason += ": " + msg
		}
		why[name] = strings.ReplaceAll(reason, "|", "/")
	}
	return why
}

// whyNot is why benchmark bench (or the one it is part of) reported
// nothing, if it said.
func whyNot(why map[string]string, bench string) string {
	for name := bench; name != ""; {
		if r, ok := why[name]; ok {
			return r
		}
		i := strings.LastIndex(name, "/")
		if i < 0 {
			break
		}
		name = name[:i]
	}
	return "no result (see the raw output)"
}

// parse collects every value of every metric: results[bench][unit].
func parse(out string) map[string]map[string][]float64 {
	res := map[string]map[string][]float64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	pending := "" // a benchmark whose name was printed, its figures not yet
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && strings.HasPrefix(f[0], "Benchmark") && (len(f) < 4 || f[3] != "ns/op") {
			// What the benchmark's processes printed (go test merges their
			// stderr) came between its name and its figures.
			pending = f[0]
			continue
		}
		if pending != "" && len(f) >= 4 && f[2] == "ns/op" {
			f = append([]string{pending}, f...)
		}
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		pending = ""
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		if res[name] == nil {
			res[name] = map[string][]float64{}
		}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				res[name][f[i+1]] = append(res[name][f[i+1]], v)
			}
		}
	}
	return res
}

func stats(vs []float64) (median, lo, hi float64) {
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	return s[len(s)/2], s[0], s[len(s)-1]
}

func render(res map[string]map[string][]float64, why map[string]string) string {
	var b strings.Builder
	fmt.Fprintln(&b, "| metric | vwire (median [min–max]) | yardstick | ratio | target | unit | method |")
	fmt.Fprintln(&b, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		vs := res[r.bench][r.unit]
		if len(vs) == 0 {
			fmt.Fprintf(&b, "| %s | not measured: %s | | | %s | %s | %s |\n", r.metric, whyNot(why, r.bench), r.target, r.unit, r.method)
			continue
		}
		v, lo, hi := stats(vs)
		yard, ratio := "", ""
		var y float64
		if ys := res[r.yardBench][r.yUnit]; len(ys) > 0 {
			y, _, _ = stats(ys)
			yard = num(y)
			ratio = fmt.Sprintf("%.2g×", v/y)
		}
		target := r.target
		if r.ok != nil {
			if r.ok(v, y) {
				target += " ✓"
			} else {
				target += " ✗ missed"
			}
		}
		fmt.Fprintf(&b, "| %s | %s [%s–%s] | %s | %s | %s | %s | %s |\n", r.metric, num(v), num(lo), num(hi), yard, ratio, target, r.unit, r.method)
	}
	return b.String()
}

// num prints three significant digits, without exponents.
func num(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func write(path, table, raw string, quick bool, count int) error {
	mode := fmt.Sprintf("%d runs of each benchmark", count)
	if quick {
		mode = "quick mode (BENCH=quick): one short run of each, a smoke test, not a measurement"
	}
	doc := fmt.Sprintf(`# Benchmarks

Measured by `+"`make bench`"+` on %s: %s, %d cores, kernel %s, %s. %s.
Each figure is the median of the runs, with their minimum and maximum.
The raw output, which benchstat reads, is in [benchmarks.txt](benchmarks.txt).

%s`, time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), kernel(), runtime.Version(), mode, table)
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		return err
	}
	return os.WriteFile(strings.TrimSuffix(path, ".md")+".txt", []byte(raw), 0o644)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
