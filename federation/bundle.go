package federation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// DefaultRefreshHint is what a vwire bundle endpoint tells its peers: fetch
// again after this long.
const DefaultRefreshHint = 5 * time.Minute

// BundleFunc returns the bundle a bundle endpoint serves now.
type BundleFunc func() (*spiffebundle.Bundle, error)

func (f BundleFunc) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	b, err := f()
	if err != nil {
		return nil, err
	}
	if b.TrustDomain() != td {
		return nil, fmt.Errorf("this endpoint serves %q, not %q", b.TrustDomain(), td)
	}
	return b, nil
}

// BundleEndpoint serves a trust domain's bundle as a SPIFFE bundle endpoint
// with the https_spiffe profile: over TLS with the SVID of svid (whose ID
// peers configure as the endpoint's), at any path, to anyone (a bundle is
// public).
type BundleEndpoint struct {
	srv *http.Server
	lis net.Listener
}

// ServeBundleEndpoint starts serving td's bundle from bundle on lis.
func ServeBundleEndpoint(lis net.Listener, td spiffeid.TrustDomain, bundle BundleFunc, svid x509svid.Source, log *slog.Logger) (*BundleEndpoint, error) {
	h, err := federation.NewHandler(td, bundle)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsconfig.TLSServerConfig(svid),
		ReadHeaderTimeout: 10 * time.Second,
		// Fetchers open a connection per fetch; do not keep them around.
		IdleTimeout: 5 * time.Second,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	e := &BundleEndpoint{srv: srv, lis: lis}
	go func() {
		if err := srv.Serve(tls.NewListener(lis, srv.TLSConfig)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("bundle endpoint stopped", "addr", lis.Addr().String(), "err", err)
		}
	}()
	return e, nil
}

// URL is the endpoint's address for peers on this host.
func (e *BundleEndpoint) URL() string { return "https://" + e.lis.Addr().String() }

// Close stops serving.
func (e *BundleEndpoint) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		return e.srv.Close() // cut what did not finish in time
	}
	return nil
}
