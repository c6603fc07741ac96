package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// events renders go test -json lines for package p.
func events(evs ...event) string {
	var b strings.Builder
	for _, e := range evs {
		e.Package = "example.com/p"
		j, _ := json.Marshal(e)
		b.Write(append(j, '\n'))
	}
	return b.String()
}

// A failure inside a subtest reaches the report, and its message closes
// the log, after the process output that a helper logged.
func TestFailedSubtestIsShown(t *testing.T) {
	in := events(
		event{Action: "output", Test: "TestA", Output: "=== RUN   TestA\n"},
		event{Action: "output", Test: "TestA", Output: "    process.go:75: vwire domain: started\n"},
		event{Action: "output", Test: "TestA/sub", Output: "    a_test.go:12: ping 10.0.0.1: 100% packet loss\n"},
		event{Action: "output", Test: "TestA/sub", Output: "    --- FAIL: TestA/sub (1.00s)\n"},
		event{Action: "fail", Test: "TestA/sub"},
		event{Action: "output", Test: "TestA", Output: "    process.go:75: vwire domain: stopping\n"},
		event{Action: "output", Test: "TestA", Output: "--- FAIL: TestA (2.00s)\n"},
		event{Action: "fail", Test: "TestA"},
		event{Action: "pass", Test: "TestB"},
		event{Action: "skip", Test: "TestC"},
		event{Action: "fail"},
	)
	var out strings.Builder
	if code := run(strings.NewReader(in), &out); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	got := out.String()
	_, tail, ok := strings.Cut(got, "failures, in the tests' own words")
	if !ok {
		t.Fatalf("no closing summary:\n%s", got)
	}
	for _, want := range []string{"FAIL example.com/p TestA", "a_test.go:12: ping 10.0.0.1: 100% packet loss", "--- FAIL: TestA/sub", "1 passed, 1 failed, 1 skipped"} {
		if !strings.Contains(tail, want) {
			t.Errorf("the closing summary misses %q:\n%s", want, tail)
		}
	}
	if strings.Contains(tail, "process.go") {
		t.Errorf("the closing summary repeats process output:\n%s", tail)
	}
	if !strings.Contains(got, "vwire domain: stopping") {
		t.Errorf("the failed test's whole output is not shown:\n%s", got)
	}
}

func TestAllPassed(t *testing.T) {
	var out strings.Builder
	code := run(strings.NewReader(events(event{Action: "pass", Test: "TestA"}, event{Action: "pass"})), &out)
	if code != 0 || strings.Contains(out.String(), "failures") || !strings.HasSuffix(out.String(), "1 passed, 0 failed, 0 skipped\n") {
		t.Errorf("exit %d, report:\n%s", code, out.String())
	}
}
