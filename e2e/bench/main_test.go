package main

import (
	"strings"
	"testing"
)

// A row whose benchmark failed or was skipped says why in the table, in
// place of a figure.
func TestRowSaysWhyNot(t *testing.T) {
	out := `goos: linux
BenchmarkNetnsSetup/cross-domain-2   	1	1225139261 ns/op	12.38 p50-ms
--- FAIL: BenchmarkNetnsScale
    scale_test.go:80: after the last set-up: 819 of 1000 vWires pass no ping | more
--- SKIP: BenchmarkContainers
    e2e.go:40: docker not found
FAIL
`
	table := render(parse(out), reasons(out))
	for _, want := range []string{
		"| cross-domain vWire set-up p50 (netns) | 12.4 [12.4–12.4] |",
		"| closing 1,000 live vWires | not measured: failed: after the last set-up: 819 of 1000 vWires pass no ping / more |",
		"| WireGuard vWire TCP throughput (containers) | not measured: skipped: docker not found |",
		"| pod-to-pod cross-cluster vWire set-up (kind) | not measured: no result (see the raw output) |",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("the table has no line with %q:\n%s", want, table)
		}
	}
}
