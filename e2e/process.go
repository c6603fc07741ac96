package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vwire/vwire/internal/proc"
)

// Process is a vwire server role that a test runs as its own process.
type Process struct {
	Cmd *exec.Cmd
	// Ready is the line it printed when ready ("vwire domain … ready in …").
	Ready string

	p     *proc.Process
	mu    sync.Mutex
	lines []string
	added chan struct{} // closed and replaced at each line
}

// WaitFor returns the first line of its output so far or within d that
// contains each of parts, or "" if none does.
func (p *Process) WaitFor(d time.Duration, parts ...string) string {
	deadline := time.After(d)
	for seen := 0; ; {
		p.mu.Lock()
		lines, added := p.lines[seen:], p.added
		seen = len(p.lines)
		p.mu.Unlock()
	lines:
		for _, l := range lines {
			for _, part := range parts {
				if !strings.Contains(l, part) {
					continue lines
				}
			}
			return l
		}
		select {
		case <-added:
		case <-deadline:
			return ""
		}
	}
}

// Signal sends sig and waits until the process exited and all its output
// was logged (Cmd.Wait alone may cut the last lines off); it returns how
// the process ended.
func (p *Process) Signal(sig os.Signal) error {
	p.Cmd.Process.Signal(sig)
	<-p.p.Done()
	return p.Cmd.Wait()
}

func (p *Process) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, line)
	close(p.added)
	p.added = make(chan struct{})
}

// LogOutput logs a line that process name printed. It is not a t.Helper:
// the line is attributed to this file, which tells a process's output from
// the test's own messages (testsum's closing summary shows only those).
func LogOutput(t testing.TB, name, line string) { t.Logf("%s: %s", name, line) }

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
	out := &Process{Cmd: cmd, added: make(chan struct{})}
	p, line, err := proc.Start(context.Background(), cmd, time.Minute, func(l string) { LogOutput(t, "vwire "+name, l); out.add(l) },
		func(l string) bool { return strings.Contains(l, " ready in ") })
	if err != nil {
		t.Fatalf("vwire %v: %v (its output is above)", args, err)
	}
	t.Cleanup(func() { p.Stop(10 * time.Second) })
	out.p, out.Ready = p, line
	return out
}

// Buffer is a strings.Builder that a logger and a test may use at once:
// a domain's log, which the test then searches.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RSS is the resident memory of process pid, in bytes.
func RSS(t testing.TB, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb << 10
		}
	}
	t.Fatalf("process %d reports no VmRSS", pid)
	return 0
}
