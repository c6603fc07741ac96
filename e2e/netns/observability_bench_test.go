package netns

import (
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/kernel"
)

// BenchmarkNetnsObservability: what metrics and tracing cost. Both domains
// run in turns without them and with them (--metrics-listen scraped,
// --otlp-endpoint to a receiver that takes every span), four rounds each
// way, alternating which goes first (this machine's speed drifts); each
// time the client domain's RSS 2 s after ready, then cross-domain set-ups
// one after another. The set-ups of each way are pooled.
func BenchmarkNetnsObservability(b *testing.B) {
	w := benchWorld(b)
	a, bh := w.domains["a.example"], w.domains["b.example"]
	var lis net.Listener
	if err := kernel.Do(w.internet, func() (err error) { lis, err = net.Listen("tcp", "10.99.0.254:4317"); return err }); err != nil {
		b.Fatal(err)
	}
	traces := e2e.ReceiveOTLP(b, lis)
	rounds, n := 4, 50
	if quick() {
		rounds, n = 1, 20
	}
	var times [2][]time.Duration // off, on
	var rss [2]float64
	run := 0
	measure := func(on int) {
		for _, h := range []*host{a, bh} {
			var flags []string
			if on == 1 {
				flags = []string{"--metrics-listen", h.addr + ":9090", "--otlp-endpoint", "10.99.0.254:4317"}
			}
			w.restart(h, flags...)
		}
		time.Sleep(2 * time.Second) // idle, by definition: as the warm-start row
		if on == 1 {
			for _, h := range []*host{a, bh} {
				e2e.ScrapeWith(b, clientIn(h.ns), h.addr+":9090")
			}
		}
		rss[on] += float64(e2e.RSS(b, a.proc.Cmd.Process.Pid)) / (1 << 20) / float64(rounds)
		t, _, _ := setups(b, w.gatewayClient("a.example"), "svc@b.example", w.fresh(fmt.Sprintf("o%d", run)), "vo", n, 1)
		times[on] = append(times[on], t...)
		run++
	}
	for r := range rounds {
		measure(r % 2)
		measure(1 - r%2)
	}
	// Every set-up with tracing on was traced: its spans arrived.
	if !traces.WaitFor(10*time.Second, func(spans []e2e.Span) bool {
		roots := 0
		for _, s := range spans {
			if s.Service == "a.example" && s.Attrs["vwire.hop"] == "gateway" && s.Parent == "" {
				roots++
			}
		}
		return roots >= rounds*n
	}) {
		b.Errorf("fewer than %d traces of the set-ups with tracing on arrived", rounds*n)
	}
	for on, name := range []string{"off", "on"} {
		slices.Sort(times[on])
		b.ReportMetric(ms(times[on][len(times[on])/2]), name+"-p50-ms")
		b.ReportMetric(ms(times[on][len(times[on])*99/100]), name+"-p99-ms")
		b.ReportMetric(rss[on], name+"-rss-MB")
	}
}
