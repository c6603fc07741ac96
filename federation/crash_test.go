package federation

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/internal/crashpoint"
)

// The CA stopped at each instant between two of its writes starts again,
// whole: a rotation stopped between activation's two renames finishes (the
// new root issues, with its key); a new root stopped between its key and
// its certificate is forgotten and can be made again; one stopped before
// it was published is published at start.
func TestCACrashes(t *testing.T) {
	for _, tc := range []struct {
		at     string
		steps  func(ca *CA) error
		active string // "new" or "old" root issues after the restart
		roots  int    // published after the restart
	}{
		{"ca-activate", func(ca *CA) error {
			if err := ca.Prepare(); err != nil {
				return err
			}
			return ca.Activate()
		}, "new", 2},
		{"ca-create", func(ca *CA) error { return ca.Prepare() }, "old", 1},
		{"ca-prepare", func(ca *CA) error { return ca.Prepare() }, "old", 2},
	} {
		t.Run(tc.at, func(t *testing.T) {
			dir := t.TempDir()
			ca, err := OpenCA(dir, td)
			if err != nil {
				t.Fatal(err)
			}
			old := ca.Bundle().X509Authorities()[0]
			restore := crashpoint.Set(crashpoint.At(tc.at))
			crashed := crashpoint.Run(func() { tc.steps(ca) })
			restore()
			if !crashed {
				t.Fatalf("never reached %s", tc.at)
			}
			again, err := OpenCA(dir, td)
			if err != nil {
				t.Fatalf("the CA does not start after a crash at %s: %v", tc.at, err)
			}
			if n := len(again.Bundle().X509Authorities()); n != tc.roots {
				t.Errorf("%d roots published, want %d", n, tc.roots)
			}
			svid, err := again.Issue(AdminID(td), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			fromOld := svid.Certificates[0].CheckSignatureFrom(old) == nil
			if fromOld != (tc.active == "old") {
				t.Errorf("after the restart the %s root should issue; issued by the old one: %v", tc.active, fromOld)
			}
			// The rotation goes on from where it is.
			if again.prepared() {
				err = again.Activate()
			} else {
				err = again.Prepare()
			}
			if err != nil {
				t.Errorf("the next rotation step after the restart: %v", err)
			}
		})
	}
}

// Keys others can read are refused at start, with what to do; vwire's own
// writes are private.
func TestSecretsArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := OpenCA(dir, td); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(t.TempDir(), "creds")
	os.MkdirAll(creds, 0o755) // a volume's root, say
	ca, _ := OpenCA(dir, td)
	if err := ca.WriteCredentials(creds, AdminID(td), time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "ca.key"), creds, filepath.Join(creds, "svid.key")} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, %v", p, fi.Mode(), err)
		}
	}
	os.Chmod(filepath.Join(dir, "ca.key"), 0o644)
	if _, err := OpenCA(dir, td); err == nil || !strings.Contains(err.Error(), "ca.key holds secrets but is open to others than its owner (mode 0644): refused; chmod 0600") {
		t.Errorf("a world-readable CA key: %v", err)
	}
	os.Chmod(filepath.Join(dir, "ca.key"), 0o600)
	os.Chmod(dir, 0o755)
	if _, err := OpenCA(dir, td); err == nil || !strings.Contains(err.Error(), "chmod 0700") {
		t.Errorf("an open CA directory: %v", err)
	}
	os.Chmod(filepath.Join(creds, "svid.key"), 0o640)
	if _, err := LoadCredentials(creds); err == nil || !strings.Contains(err.Error(), "svid.key holds secrets") {
		t.Errorf("a group-readable SVID key: %v", err)
	}
}
