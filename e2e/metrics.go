package e2e

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics is one scrape of a role's /metrics.
type Metrics struct {
	Raw      []byte
	families map[string]*dto.MetricFamily
}

// Scrape GETs http://addr/metrics and parses it (the text format).
func Scrape(t testing.TB, addr string) Metrics {
	t.Helper()
	return ScrapeWith(t, http.DefaultClient, addr)
}

// ScrapeWith is Scrape with client (one that dials into a network
// namespace, say).
func ScrapeWith(t testing.TB, client *http.Client, addr string) Metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("scraping %s: %v", addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s %v\n%s", addr, resp.Status, err, raw)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("scraping %s: %v\n%s", addr, err, raw)
	}
	return Metrics{Raw: raw, families: families}
}

// Has says whether the scrape has a family called name.
func (m Metrics) Has(name string) bool { return m.families[name] != nil }

// Value sums the series of name whose labels include every "k=v" of want:
// a counter's or gauge's value, a histogram's count of observations.
func (m Metrics) Value(name string, want ...string) float64 {
	f := m.families[name]
	if f == nil {
		return 0
	}
	sum := 0.0
	for _, s := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for _, w := range want {
			k, v, _ := strings.Cut(w, "=")
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case s.Counter != nil:
			sum += s.GetCounter().GetValue()
		case s.Gauge != nil:
			sum += s.GetGauge().GetValue()
		case s.Histogram != nil:
			sum += float64(s.GetHistogram().GetSampleCount())
		case s.Untyped != nil:
			sum += s.GetUntyped().GetValue()
		}
	}
	return sum
}

// Promtool runs `promtool check metrics` on the scrape: Prometheus's own
// lint of names, units, suffixes and help texts.
func (m Metrics) Promtool(t testing.TB) {
	t.Helper()
	cmd := exec.Command(ToolPath(t, "promtool"), "check", "metrics")
	cmd.Stdin = bytes.NewReader(m.Raw)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
