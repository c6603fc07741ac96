package demo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vwire/vwire/internal/proc"
)

// start runs bin with args inside namespace ns and returns once a line of
// its output satisfies ready (that line), or with an error that quotes the
// end of its log. Its output goes to dir/NAME.log; it is in its own
// process group, so a Ctrl-C at the terminal reaches only the demo, which
// stops it in order. The returned func stops it.
func start(ctx context.Context, dir, name, ns, bin string, ready func(string) bool, args ...string) (func(), string, error) {
	log := filepath.Join(dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p, line, err := proc.Start(ctx, cmd, time.Minute, func(l string) { fmt.Fprintln(f, l) }, ready)
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("%s: %w:\n%s", name, err, tail(log))
	}
	return func() { p.Stop(15 * time.Second); f.Close() }, line, nil
}

// tail is the end of a log, indented.
func tail(log string) string {
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return "    " + strings.Join(lines, "\n    ")
}
