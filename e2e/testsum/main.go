// Command testsum reads `go test -json` on standard input, prints what
// plain `go test` prints (a line per package, and the output of failing
// tests with their subtests), and closes with the failures' own messages
// (the lines the tests wrote from their _test.go files, so that the end of
// a long log says what failed) and one line: "N passed, N failed,
// N skipped", counting top-level tests. It exits non-zero when a test or a
// package failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

// fromTest matches a line a test wrote itself (t.Errorf, t.Fatalf, t.Logf
// in a _test.go file), as opposed to a process's output logged by a helper.
var fromTest = regexp.MustCompile(`^\s+\S+_test\.go:\d+: `)

const (
	maxLines = 30  // per failed test, in the closing summary
	maxWidth = 300 // characters per line there
)

func main() { os.Exit(run(os.Stdin, os.Stdout)) }

// run reads the events from r, writes the report to w, and returns the
// exit status.
func run(r io.Reader, w io.Writer) int {
	var passed, failed, skipped int
	pkgFailed := false
	output := map[string][]string{} // package/top-level test → its output and its subtests'
	var summary []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Fprintln(w, sc.Text()) // not JSON: a build error, say
			continue
		}
		top, _, sub := strings.Cut(e.Test, "/")
		key := e.Package + "/" + top
		switch e.Action {
		case "output":
			output[key] = append(output[key], e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				status := map[string]string{"pass": "ok  ", "fail": "FAIL", "skip": "?   "}[e.Action]
				if e.Action == "fail" {
					pkgFailed = true
					fmt.Fprint(w, strings.Join(output[key], ""))
					summary = append(summary, "FAIL "+e.Package+" (output above)")
				}
				fmt.Fprintf(w, "%s\t%s\t%.3fs\n", status, e.Package, e.Elapsed)
				delete(output, key)
				continue
			}
			if sub {
				continue // its output goes with its top-level test's
			}
			switch e.Action {
			case "pass":
				passed++
			case "fail":
				failed++
				fmt.Fprint(w, strings.Join(output[key], ""))
				summary = append(summary, failure(e.Package, e.Test, output[key])...)
			case "skip":
				skipped++
			}
			delete(output, key)
		}
	}
	if len(summary) > 0 {
		fmt.Fprintln(w, "failures, in the tests' own words (their whole output is above):")
		for _, l := range summary {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed {
		return 1
	}
	return 0
}

// failure condenses a failed test's output to its "--- FAIL" lines and the
// lines its _test.go files wrote, the last maxLines of them.
func failure(pkg, test string, output []string) []string {
	var lines []string
	for _, l := range output {
		l = strings.TrimRight(l, "\n")
		if !fromTest.MatchString(l) && !strings.Contains(l, "--- FAIL:") {
			continue
		}
		if len(l) > maxWidth {
			l = l[:maxWidth] + " …"
		}
		lines = append(lines, l)
	}
	if len(lines) > maxLines {
		lines = append([]string{fmt.Sprintf("    (%d lines before these left out)", len(lines)-maxLines)}, lines[len(lines)-maxLines:]...)
	}
	return append([]string{"FAIL " + pkg + " " + test}, lines...)
}
