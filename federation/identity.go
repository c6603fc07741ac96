package federation

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// OpenIdentity returns the Source of component id: the SPIRE agent's
// Workload API at socket when it is set, else an SVID from the built-in CA
// kept in dataDir/ca. With the built-in CA it also keeps admin credentials
// for the CLI in dataDir/admin, rewriting them before they expire, until the
// Source is closed.
func OpenIdentity(ctx context.Context, socket, dataDir string, id spiffeid.ID, log *slog.Logger) (Source, error) {
	if socket != "" {
		return WorkloadSource(ctx, socket, id)
	}
	ca, err := OpenCA(filepath.Join(dataDir, "ca"), id.TrustDomain())
	if err != nil {
		return nil, err
	}
	src, err := ca.NewSource(id, 0, nil, log)
	if err != nil {
		return nil, err
	}
	adminDir := filepath.Join(dataDir, "admin")
	write := func() error { return ca.WriteCredentials(adminDir, AdminID(id.TrustDomain()), DefaultAdminLifetime) }
	changed := ca.Changed()
	if err := write(); err != nil {
		src.Close()
		return nil, err
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			// Rewrite before expiry, and when the CA switches roots or
			// changes its bundle (the CLI verifies the domain with it).
			select {
			case <-stop:
				return
			case <-time.After(DefaultAdminLifetime / 2):
			case <-changed:
			}
			changed = ca.Changed()
			if err := write(); err != nil {
				log.Error("rewriting admin credentials failed", "dir", adminDir, "err", err)
			}
		}
	}()
	return &builtinSource{CASource: src, stop: stop, done: done}, nil
}

type builtinSource struct {
	*CASource
	stop, done chan struct{}
}

func (s *builtinSource) Close() error {
	close(s.stop)
	<-s.done
	return s.CASource.Close()
}
