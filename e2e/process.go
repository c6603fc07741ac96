package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/internal/proc"
)

// Process is a vwire server role that a test runs as its own process.
type Process struct {
	Cmd *exec.Cmd
	// Ready is the line it printed when ready ("vwire domain … ready in …").
	Ready string
}

// StartVwire runs bin with args (and env added to the test's) until the
// test ends, logging its output through t, and returns once it printed its
// ready line. It fails the test if the process exits first or is not ready
// within 60 s. At the end it is interrupted, and killed if it lingers.
func StartVwire(t testing.TB, bin string, env []string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	name := args[0]
	for i, a := range args {
		if a == "--name" && i+1 < len(args) {
			name += " " + args[i+1]
		}
	}
	p, line, err := proc.Start(context.Background(), cmd, time.Minute, func(l string) { t.Logf("vwire %s: %s", name, l) },
		func(l string) bool { return strings.Contains(l, " ready in ") })
	if err != nil {
		t.Fatalf("vwire %v: %v (its output is above)", args, err)
	}
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	return &Process{Cmd: cmd, Ready: line}
}
