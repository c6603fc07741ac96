package federation

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vwire/vwire/internal/metrics"
)

var (
	bundleAgeDesc       = metrics.Desc("federation", "bundle_age_seconds", "Time since the peer's bundle last arrived from its bundle endpoint (absent while only its bootstrap bundle is trusted).", "peer")
	bundleExpiryDesc    = metrics.Desc("federation", "bundle_expiry_timestamp_seconds", "When the bundle trusted for the peer stops verifying anything: the latest expiry of its authorities, in Unix seconds.", "peer")
	refreshFailuresDesc = metrics.Desc("federation", "bundle_refresh_failures_total", "Fetches of the peer's bundle that failed or were refused since the process started.", "peer")
	peerUpDesc          = metrics.Desc("federation", "peer_bundle_trusted", "1 when a bundle of the peer's trust domain is trusted here, else 0.", "peer")
)

// peersCollector reports each federated peer's bundle at a scrape.
type peersCollector struct{ p *Peers }

// Collector reports the peers' bundles (their ages, expiries and failed
// refreshes) when scraped: a label value per federated peer, which only
// this domain's administrator adds.
func (p *Peers) Collector() prometheus.Collector { return peersCollector{p} }

func (c peersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- bundleAgeDesc
	ch <- bundleExpiryDesc
	ch <- refreshFailuresDesc
	ch <- peerUpDesc
}

func (c peersCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, st := range c.p.List() {
		trusted := 0.0
		if st.Source != "" {
			trusted = 1
			ch <- prometheus.MustNewConstMetric(bundleExpiryDesc, prometheus.GaugeValue, float64(st.Expires.Unix()), st.Domain)
		}
		ch <- prometheus.MustNewConstMetric(peerUpDesc, prometheus.GaugeValue, trusted, st.Domain)
		if !st.LastFetched.IsZero() {
			ch <- prometheus.MustNewConstMetric(bundleAgeDesc, prometheus.GaugeValue, now.Sub(st.LastFetched).Seconds(), st.Domain)
		}
		ch <- prometheus.MustNewConstMetric(refreshFailuresDesc, prometheus.CounterValue, float64(st.Failures), st.Domain)
	}
}
