package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
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
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := args[0]
	for i, a := range args {
		if a == "--name" && i+1 < len(args) {
			name += " " + args[i+1]
		}
	}
	ready, done := make(chan string, 1), make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Logf("vwire %s: %s", name, sc.Text())
			if strings.Contains(sc.Text(), " ready in ") {
				select {
				case ready <- sc.Text():
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		cmd.Wait()
	})
	select {
	case line := <-ready:
		return &Process{Cmd: cmd, Ready: line}
	case <-done:
		t.Fatalf("vwire %v exited before it was ready (its output is above)", args)
	case <-time.After(60 * time.Second):
		t.Fatalf("vwire %v not ready after 60s (its output is above)", args)
	}
	return nil
}
