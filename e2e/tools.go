package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ToolPath finds a real component that `make tools` builds (etcd,
// spire-server, spire-agent) in $VWIRE_TOOLS_BIN (default
// ~/.cache/vwire/tools). Missing, it fails the test under CI=true and skips
// it elsewhere, naming what to run.
func ToolPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("VWIRE_TOOLS_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "vwire", "tools")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("%s is missing (%v): run `make tools` (make test runs it)", p, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}
