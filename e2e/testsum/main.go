// Command testsum reads `go test -json` on standard input, prints what
// plain `go test` prints (a line per package, and the output of failing
// tests), and closes with one line: "N passed, N failed, N skipped",
// counting tests. It exits non-zero when a test or a package failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	var passed, failed, skipped int
	pkgFailed := false
	output := map[string][]string{} // package/test → its output, shown if it fails
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Println(sc.Text()) // not JSON: a build error, say
			continue
		}
		key := e.Package + "/" + e.Test
		switch e.Action {
		case "output":
			output[key] = append(output[key], e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" {
				status := map[string]string{"pass": "ok  ", "fail": "FAIL", "skip": "?   "}[e.Action]
				if e.Action == "fail" {
					pkgFailed = true
					fmt.Print(strings.Join(output[key], ""))
				}
				fmt.Printf("%s\t%s\t%.3fs\n", status, e.Package, e.Elapsed)
				delete(output, key)
				continue
			}
			if strings.Contains(e.Test, "/") {
				continue // count top-level tests only
			}
			switch e.Action {
			case "pass":
				passed++
			case "fail":
				failed++
				fmt.Print(strings.Join(output[key], ""))
			case "skip":
				skipped++
			}
			delete(output, key)
		}
	}
	fmt.Printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped)
	if failed > 0 || pkgFailed {
		os.Exit(1)
	}
}
