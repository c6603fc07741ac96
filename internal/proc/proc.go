// Package proc runs a program until it says it is ready: every line of its
// output goes to a function, and Start returns with the line that says so.
// `vwire demo` and the tests run vwire's roles this way.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// Process is a started program.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
}

// Start starts cmd with its standard error joined to its output, hands
// each line of that output to each, and returns the first line that ready
// accepts. It fails, stopping the program, when the program exits first,
// ctx ends, or within passes.
func Start(ctx context.Context, cmd *exec.Cmd, within time.Duration, each func(string), ready func(string) bool) (*Process, string, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			each(sc.Text())
			if ready(sc.Text()) {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}
	}()
	select {
	case line := <-lines:
		return p, line, nil
	case <-p.done:
		p.Stop(0)
		return nil, "", errors.New("it exited before it was ready")
	case <-ctx.Done():
		p.Stop(time.Second)
		return nil, "", ctx.Err()
	case <-time.After(within):
		p.Stop(time.Second)
		return nil, "", fmt.Errorf("not ready after %v", within)
	}
}

// Done is closed once the program's output ended: it exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop interrupts the program (servers shut down cleanly, clients close
// what they hold), kills it if it lingers beyond grace, and waits for it.
func (p *Process) Stop(grace time.Duration) {
	p.Cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Cmd.Process.Kill()
		<-p.done
	}
	p.Cmd.Wait()
}
