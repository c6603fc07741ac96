package federation

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Identity is a process's identity: its Source, and with the built-in CA
// the CA and the Trust that federation adds peers to.
type Identity struct {
	Source
	// CA and Trust are nil when a SPIRE agent supplies SVIDs and bundles.
	CA    *CA
	Trust *Trust

	stop, done chan struct{}
}

// OpenIdentity returns the identity of component id: the SPIRE agent's
// Workload API at socket when it is set, else an SVID from the built-in CA
// kept in dataDir/ca. With the built-in CA it also keeps admin credentials
// for the CLI in dataDir/admin, rewriting them before they expire and when
// the CA changes roots, until Close.
func OpenIdentity(ctx context.Context, socket, dataDir string, id spiffeid.ID, log *slog.Logger) (*Identity, error) {
	if socket != "" {
		src, err := WorkloadSource(ctx, socket, func(got spiffeid.ID) bool { return got == id })
		if err != nil {
			return nil, err
		}
		return &Identity{Source: src}, nil
	}
	ca, err := OpenCA(filepath.Join(dataDir, "ca"), id.TrustDomain())
	if err != nil {
		return nil, err
	}
	trust := NewTrust(ca.Bundle())
	src, err := ca.NewSource(id, 0, trust, log)
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
	ident := &Identity{Source: src, CA: ca, Trust: trust, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ident.done)
		for {
			// Rewrite before expiry, and when the CA switches roots or
			// changes its bundle (the CLI verifies the domain with it).
			select {
			case <-ident.stop:
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
	return ident, nil
}

// Close stops renewing.
func (i *Identity) Close() error {
	if i.stop != nil {
		close(i.stop)
		<-i.done
	}
	return i.Source.Close()
}
