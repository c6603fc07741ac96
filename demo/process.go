package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// process is a program the demo runs in a network namespace, its output
// kept in a log file.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// start runs bin with args inside namespace ns and returns once a line of
// its output satisfies ready (that line), or with an error that quotes the
// end of its log if it exits first, ctx ends or a minute passes. Its
// output goes to dir/NAME.log; it is in its own process group, so a
// Ctrl-C at the terminal reaches only the demo, which stops it in order.
func start(ctx context.Context, dir, name, ns, bin string, ready func(string) bool, args ...string) (*process, string, error) {
	p := &process{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, "", err
	}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return nil, "", err
	}
	p.cmd.Stderr = p.cmd.Stdout
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, "", fmt.Errorf("starting %s: %w", name, err)
	}
	lines := make(chan string, 1)
	go func() {
		defer close(p.done)
		defer f.Close()
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(f, sc.Text())
			if ready(sc.Text()) {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}
		io.Copy(io.Discard, out)
		p.cmd.Wait()
	}()
	select {
	case line := <-lines:
		return p, line, nil
	case <-p.done:
		return nil, "", fmt.Errorf("%s exited before it was ready:\n%s", name, p.tail())
	case <-ctx.Done():
		p.stop()
		return nil, "", ctx.Err()
	case <-time.After(time.Minute):
		p.stop()
		return nil, "", fmt.Errorf("%s not ready after a minute:\n%s", name, p.tail())
	}
}

// stop interrupts the process (servers shut down cleanly, clients close
// their vWires) and kills it if it lingers.
func (p *process) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// tail is the end of the process's log, indented.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "    " + strings.Join(lines, "\n    ")
}
