package main

import (
	"strings"
	"testing"
)

// A row whose benchmark failed or was skipped says why in the table, in
// place of a figure; figures printed apart from their benchmark's name
// (its processes' output between) still count.
func TestRowSaysWhyNot(t *testing.T) {
	out := `goos: linux
BenchmarkNetnsSetup/cross-domain-2   	1	1225139261 ns/op	12.38 p50-ms
BenchmarkNetnsSetup/local-2   	maxprocs: Leaving GOMAXPROCS=2: CPU quota undefined
a.example.:53 on 10.99.0.254
       1	1030321143 ns/op	         7.371 p50-ms
--- FAIL: BenchmarkNetnsScale
    scale_test.go:70: a log line
    scale_test.go:75: a command ran:
        its output
    scale_test.go:80: after the last set-up: 819 of 1000 vWires failed a ping | more
--- SKIP: BenchmarkContainers
    e2e.go:40: docker not found
FAIL
`
	table := render(parse(out), reasons(out))
	for _, want := range []string{
		"| cross-domain vWire set-up p50 (netns) | 12.4 [12.4–12.4] | 7.37 |", // (a line split by what its processes printed)
		"| closing 1,000 live vWires | not measured: failed: after the last set-up: 819 of 1000 vWires failed a ping / more |",
		"| WireGuard vWire TCP throughput (containers) | not measured: skipped: docker not found |",
		"| pod-to-pod cross-cluster vWire set-up (kind) | not measured: no result (see the raw output) |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("the table has no line with %q:\n%s", want, table)
		}
	}
}
