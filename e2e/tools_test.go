package e2e

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// buildVwire builds the vwire binary into dir.
func buildVwire(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "vwire")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/vwire/vwire/cmd/vwire").CombinedOutput(); err != nil {
		t.Fatalf("building vwire: %v\n%s", err, out)
	}
	return bin
}
