package netns

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/kernel"
)

// BenchmarkNetnsObservability: what metrics and tracing cost. Both domains
// run without them, with them (--metrics-listen scraped, --otlp-endpoint
// to a receiver that takes every span), and without them again; each
// time their idle RSS 2 s after ready, then cross-domain set-ups one after
// another. "off" is the mean of the two runs without.
func BenchmarkNetnsObservability(b *testing.B) {
	w := benchWorld(b)
	a, bh := w.domains["a.example"], w.domains["b.example"]
	var lis net.Listener
	if err := kernel.Do(w.internet, func() (err error) { lis, err = net.Listen("tcp", "10.99.0.254:4317"); return err }); err != nil {
		b.Fatal(err)
	}
	traces := e2e.ReceiveOTLP(b, lis)
	n := 200
	if quick() {
		n = 20
	}
	type result struct{ p50, p99, rss float64 }
	measure := func(run int, on bool) result {
		for _, h := range []*host{a, bh} {
			var flags []string
			if on {
				flags = []string{"--metrics-listen", h.addr + ":9090", "--otlp-endpoint", "10.99.0.254:4317"}
			}
			w.restart(h, flags...)
		}
		time.Sleep(2 * time.Second) // idle, by definition: as the warm-start row
		if on {
			for _, h := range []*host{a, bh} {
				e2e.ScrapeWith(b, clientIn(h.ns), h.addr+":9090")
			}
		}
		rss := float64(e2e.RSS(b, a.proc.Cmd.Process.Pid)) / (1 << 20)
		times, _ := setups(b, w.gatewayClient("a.example"), "svc@b.example", w.fresh(fmt.Sprintf("o%d", run)), "vo", n, 1)
		return result{ms(times[len(times)/2]), ms(times[len(times)*99/100]), rss}
	}
	off1, on, off2 := measure(0, false), measure(1, true), measure(2, false)
	// Every set-up with tracing on was traced: its spans arrived.
	if !traces.WaitFor(10*time.Second, func(spans []e2e.Span) bool {
		roots := 0
		for _, s := range spans {
			if s.Service == "a.example" && s.Attrs["vwire.hop"] == "gateway" && s.Parent == "" {
				roots++
			}
		}
		return roots >= n
	}) {
		b.Errorf("fewer than %d traces of the set-ups with tracing on arrived", n)
	}
	mean := func(x, y float64) float64 { return (x + y) / 2 }
	b.ReportMetric(on.p50, "on-p50-ms")
	b.ReportMetric(mean(off1.p50, off2.p50), "off-p50-ms")
	b.ReportMetric(on.p99, "on-p99-ms")
	b.ReportMetric(mean(off1.p99, off2.p99), "off-p99-ms")
	b.ReportMetric(on.rss, "on-rss-MB")
	b.ReportMetric(mean(off1.rss, off2.rss), "off-rss-MB")
}
