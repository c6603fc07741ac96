package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// `vwire domain` on a warm start (its data directory exists): time from
// exec to the ready line (target < 2 s) and resident memory after 2 s idle
// (target < 100 MB).
func BenchmarkDomainWarmStart(b *testing.B) {
	dataDir := filepath.Join(b.TempDir(), "data")
	addr := freeAddr(b)
	run := func() (time.Duration, float64) {
		cmd := exec.Command(vwireBin, "domain", "--name", "a.example", "--data-dir", dataDir, "--listen", addr, "--log-level", "warn")
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
		sc := bufio.NewScanner(out)
		for sc.Scan() && !strings.Contains(sc.Text(), " ready in ") {
		}
		ready := time.Since(start)
		go func() { // keep draining stdout
			for sc.Scan() {
			}
		}()
		time.Sleep(2 * time.Second)
		return ready, rssMB(b, cmd.Process.Pid)
	}
	run() // the cold start creates the CA and etcd's data
	var ready time.Duration
	var rss float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, m := run()
		ready += r
		rss = max(rss, m)
	}
	b.StopTimer()
	b.ReportMetric(float64(ready.Milliseconds())/float64(b.N), "ready-ms")
	b.ReportMetric(rss, "idle-rss-MB")
}

func rssMB(b *testing.B, pid int) float64 { return float64(e2e.RSS(b, pid)) / (1 << 20) }
