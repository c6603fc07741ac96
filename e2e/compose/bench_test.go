package compose

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/proxy/proxypb"
)

func quick() bool { return os.Getenv("BENCH") == "quick" }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkContainers: the netns benchmarks' cross-domain set-up and
// WireGuard throughput rows, measured between the compose deployments of
// TestThreeDomains (a's domain.yaml, c's production.yaml, workloads whose
// sidecars hand their namespaces). BENCH=quick: 20 set-ups, 1 s of iperf3.
func BenchmarkContainers(b *testing.B) {
	s := newStack(b)
	clientApp, serverApp := s.client.id(s, "app"), s.server.id(s, "app")
	ns := "/proc/" + run(b, "docker", "inspect", "-f", "{{.State.Pid}}", clientApp) + "/ns/net"
	gw := s.gatewayOf("a.example", clientApp)
	n, seconds := 200, "5"
	if quick() {
		n, seconds = 20, "1"
	}
	b.Run("setup", func(b *testing.B) {
		var times []time.Duration
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			took, err := pingable(ctx, gw, ns, fmt.Sprintf("vb%d", i%10))
			cancel()
			if err != nil {
				b.Fatalf("set-up %d: %v", i, err)
			}
			times = append(times, took)
		}
		sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
		b.ReportMetric(ms(times[len(times)/2]), "p50-ms")
		b.ReportMetric(ms(times[len(times)*99/100]), "p99-ms")
	})
	b.Run("throughput", func(b *testing.B) {
		up := regexp.MustCompile(`-> (\d+\.\d+\.\d+\.\d+)/32`).FindStringSubmatch(run(b, "docker", "logs", s.client.id(s, "sidecar")))
		if up == nil {
			b.Fatal("the client sidecar printed no endpoint address")
		}
		var gbps float64
		for _, t := range []string{"1", seconds} { // the first second thrown away, as in the netns rows
			run(b, "docker", "exec", "-d", serverApp, "iperf3", "-s", "-1", "-B", up[1])
			var out string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				o, err := execOut("docker", "exec", clientApp, "iperf3", "-c", up[1], "-t", t, "--connect-timeout", "2000")
				if out = o; err == nil || time.Now().After(deadline) {
					break
				}
			}
			m := regexp.MustCompile(`([\d.]+) ([GM])bits/sec +receiver`).FindStringSubmatch(out)
			if m == nil {
				b.Fatalf("iperf3:\n%s", out)
			}
			gbps, _ = strconv.ParseFloat(m[1], 64)
			if m[2] == "M" {
				gbps /= 1000
			}
		}
		b.ReportMetric(gbps, "Gbit/s")
	})
}

// pingable asks a's gateway for a vWire to svc@c.example into the client
// app's namespace (handed over the socket) and waits until the endpoint
// answers a ping from it; it closes the vWire and returns the time from
// request to reply.
func pingable(ctx context.Context, gw proxypb.NetworkServiceClient, ns, iface string) (time.Duration, error) {
	begin := time.Now()
	conn, err := gw.Request(ctx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: "svc@c.example",
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Kernel{Kernel: &proxypb.KernelInterface{InterfaceName: iface}}}}})
	if err != nil {
		return 0, err
	}
	defer gw.Close(context.Background(), &proxypb.Connection{Id: conn.GetId()})
	if err := client.AwaitPeer(ctx, ns, conn); err != nil {
		return 0, err
	}
	return time.Since(begin), nil
}
