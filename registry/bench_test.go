package registry_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/registry/registrypb"
)

// reportLatencies adds p50 and p99 (in ms) of the measured calls.
func reportLatencies(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(float64(len(lat)-1)*p)]) / float64(time.Millisecond) }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// Endpoint registration over mTLS gRPC on embedded etcd (target: p50 < 5 ms).
func BenchmarkRegisterEndpoint(b *testing.B) {
	d := startDomain(b, "a.example")
	nse := d.client("/nse")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		_, err := nse.RegisterEndpoint(ctx(b), &registrypb.RegisterEndpointRequest{
			Endpoint: &registrypb.Endpoint{Name: fmt.Sprintf("nse-%d", i), NetworkServiceNames: []string{"svc"}, Labels: map[string]string{"app": "x"}},
		})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLatencies(b, lat)
}

// Find with label selection among 1,000, 10,000 and 100,000 registered
// endpoints (services of 100), over mTLS gRPC on embedded etcd (target at
// 100,000: p99 < 10 ms), and the process's resident memory then.
func BenchmarkFindScale(b *testing.B) {
	for _, total := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("endpoints=%d", total), func(b *testing.B) { benchmarkFind(b, total) })
	}
}

func benchmarkFind(b *testing.B, total int) {
	const perService = 100
	services := total / perService
	d := startDomain(b, "a.example")
	owner := "spiffe://a.example/nse"
	for s := 0; s < services; s++ {
		req := &registrypb.ApplyRequest{Services: []*registrypb.NetworkService{{
			Name: fmt.Sprintf("svc-%d", s), Payload: registrypb.Payload_IP,
			Matches: []*registrypb.Match{
				{SourceSelector: map[string]string{"app": "firewall"}, Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"app": "vpn-gateway"}}}},
				{Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"app": "firewall"}}}},
			},
		}}}
		for e := 0; e < perService; e++ {
			app := []string{"firewall", "vpn-gateway"}[e%2]
			req.Endpoints = append(req.Endpoints, &registrypb.ApplyEndpoint{Endpoint: &registrypb.Endpoint{
				Name: fmt.Sprintf("nse-%d-%d", s, e), NetworkServiceNames: []string{req.Services[0].Name}, Labels: map[string]string{"app": app},
			}})
		}
		if _, err := d.reg.Store.Apply(ctx(b), owner, req, nil); err != nil {
			b.Fatal(err)
		}
	}
	c := d.admin()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		stream, err := c.Find(ctx(b), &registrypb.FindRequest{Service: fmt.Sprintf("svc-%d", rand.IntN(services)), SourceLabels: map[string]string{"app": "firewall"}})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := stream.Recv()
		lat = append(lat, time.Since(start))
		if err != nil || len(resp.GetSnapshot().GetEndpoints()) != perService/2 {
			b.Fatalf("find: %d endpoints, %v", len(resp.GetSnapshot().GetEndpoints()), err)
		}
	}
	b.StopTimer()
	reportLatencies(b, lat)
	b.ReportMetric(rssMB(b), "rss-MB")
}

// rssMB is this process's resident memory (the registry and its embedded
// etcd run in it).
func rssMB(b *testing.B) float64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}
