package registry

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/tracing"
)

// Config configures one domain's registry. Build it with NewConfig, bind it
// to flags with AddFlags, and check it with Validate before Start.
type Config struct {
	// Name is the domain's DNS name; TrustDomain defaults to it.
	Name        string
	TrustDomain string
	DataDir     string
	Listen      string

	// An external etcd cluster; empty means the embedded one under DataDir.
	EtcdEndpoints []string
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string

	// EndpointLifetime is how long a registration lives unless refreshed,
	// when the registering side does not say.
	EndpointLifetime time.Duration

	// MetricsListen serves Prometheus metrics over plain HTTP at /metrics;
	// empty: none.
	MetricsListen string
	// OTLPEndpoint receives the role's traces (OTLP over gRPC); empty:
	// none.
	OTLPEndpoint string

	// SpiffeSocket is a SPIRE agent's Workload API; empty means the built-in
	// CA under DataDir (and SPIFFE_ENDPOINT_SOCKET is not consulted).
	SpiffeSocket string

	// Identity, when set by the embedding program, is used instead of the
	// SPIRE socket or the built-in CA.
	Identity federation.Source
	Logger   *slog.Logger
}

// Defaults.
const (
	DefaultListen           = "127.0.0.1:7001"
	DefaultEndpointLifetime = 60 * time.Second
)

// NewConfig returns a Config with the defaults.
func NewConfig() *Config {
	return &Config{
		DataDir:          "vwire-data",
		Listen:           DefaultListen,
		EndpointLifetime: DefaultEndpointLifetime,
	}
}

// AddFlags binds the config's fields to flags named as DESIGN.md spells them.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Name, "name", c.Name, "the domain's DNS name, e.g. dc.marsha.example (required)")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "the domain's SPIFFE trust domain (default: --name)")
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "where the embedded etcd, the built-in CA and the admin credentials live")
	fs.StringVar(&c.Listen, "listen", c.Listen, "the gRPC (mTLS) listen address")
	fs.StringSliceVar(&c.EtcdEndpoints, "etcd-endpoints", c.EtcdEndpoints, "an external etcd cluster's client URLs (default: embedded etcd)")
	fs.StringVar(&c.EtcdCAFile, "etcd-ca-file", c.EtcdCAFile, "CA bundle that verifies the external etcd's servers")
	fs.StringVar(&c.EtcdCertFile, "etcd-cert-file", c.EtcdCertFile, "client certificate for the external etcd")
	fs.StringVar(&c.EtcdKeyFile, "etcd-key-file", c.EtcdKeyFile, "client key for the external etcd")
	fs.DurationVar(&c.EndpointLifetime, "endpoint-lifetime", c.EndpointLifetime, "how long an endpoint registration lives unless refreshed")
	fs.StringVar(&c.SpiffeSocket, "spiffe-socket", c.SpiffeSocket, "a SPIRE agent's Workload API socket (default: the built-in CA)")
	fs.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "serve Prometheus metrics (/metrics) over plain HTTP here, host:port (off by default)")
	fs.StringVar(&c.OTLPEndpoint, "otlp-endpoint", c.OTLPEndpoint, "send OpenTelemetry traces to this OTLP/gRPC collector: host:port (plain), or an http:// or https:// URL (off by default)")
}

// Validate reports the first field that is wrong, by its flag name.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("--name: the domain name is required (e.g. --name a.example)")
	}
	if err := ValidateDomain(c.Name); err != nil {
		return fmt.Errorf("--name: %v", err)
	}
	if c.TrustDomain != "" {
		if err := ValidateDomain(c.TrustDomain); err != nil {
			return fmt.Errorf("--trust-domain: %v", err)
		}
	}
	if c.DataDir == "" && (len(c.EtcdEndpoints) == 0 || c.SpiffeSocket == "") {
		return errors.New("--data-dir: required for the embedded etcd and the built-in CA")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("--listen %q: %v (want host:port)", c.Listen, err)
	}
	for _, e := range c.EtcdEndpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints: %q is not an http:// or https:// URL", e)
		}
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		return errors.New("--etcd-cert-file and --etcd-key-file go together")
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen %q: %v (want host:port)", c.MetricsListen, err)
		}
	}
	if c.OTLPEndpoint != "" {
		if err := tracing.CheckEndpoint("--otlp-endpoint", c.OTLPEndpoint); err != nil {
			return err
		}
	}
	if c.EndpointLifetime < 2*time.Second {
		return fmt.Errorf("--endpoint-lifetime %v: at least 2s (etcd leases have whole seconds)", c.EndpointLifetime)
	}
	return nil
}

// TD is the trust domain: TrustDomain, or Name.
func (c *Config) TD() string {
	if c.TrustDomain != "" {
		return c.TrustDomain
	}
	return c.Name
}

// SPIFFETrustDomain is TD as a SPIFFE trust domain.
func (c *Config) SPIFFETrustDomain() (spiffeid.TrustDomain, error) {
	td, err := spiffeid.TrustDomainFromString(c.TD())
	if err != nil {
		return td, fmt.Errorf("--trust-domain %q: %w", c.TD(), err)
	}
	return td, nil
}

// Log is Logger, or slog's default.
func (c *Config) Log() *slog.Logger {
	if c.Logger != nil {
		return c.Logger
	}
	return slog.Default()
}
