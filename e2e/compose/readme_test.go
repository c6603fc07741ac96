package compose

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// deploy/compose/README.md's quick start, followed as written: its
// commands run in one shell from a directory that looks like the
// repository's root, with the names and addresses of its first line made
// unique. Between the blocks the test waits where the text says to wait.
func TestComposeREADME(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two domains in containers")
	}
	compose := requireDocker(t)
	readme, err := os.ReadFile(filepath.Join(root, "deploy/compose/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := shellBlocks(string(readme), "## Quick start")
	if len(blocks) != 5 {
		t.Fatalf("the quick start has %d sh blocks, want 5 (start, federate, workloads, ping, remove)", len(blocks))
	}
	b := make([]byte, 2)
	rand.Read(b)
	net := "vwr" + hex.EncodeToString(b)
	first := regexp.MustCompile(`(?m)^NET=vwire-try SUBNET=10\.77\.0 PORTS=71$`)
	if !first.MatchString(blocks[0]) {
		t.Fatalf("the quick start's first block does not start with its names:\n%s", blocks[0])
	}
	// PORTS makes ports 20001 to 31912: below the ephemeral range, so that no
	// socket the kernel numbered (another test's) holds one.
	names := fmt.Sprintf("NET=%s SUBNET=%s PORTS=%d", net, freeSubnet(t), 200+int(b[0])%120)
	blocks[0] = first.ReplaceAllString(blocks[0], names)

	// The images `make images` builds, that were not here before, go at
	// the end with everything else the quick start made.
	for _, img := range []string{"vwire:dev", "vwire-etcd:v3.7.3", "vwire-workload:bookworm"} {
		if exec.Command("docker", "image", "inspect", img).Run() != nil {
			t.Cleanup(func() { exec.Command("docker", "rmi", img).Run() })
		}
	}
	dir := t.TempDir()
	for _, f := range []string{"Makefile", "deploy"} { // build.sh finds the module through its link
		os.Symlink(filepath.Join(root, f), filepath.Join(dir, f))
	}
	remove := blocks[4]
	t.Cleanup(func() { // whatever happened, the quick start's own clean-up, then by name
		sh(t, dir, compose, names+"\n"+defs(blocks)+remove)
		for _, kind := range []string{"container", "volume", "network"} {
			out, _ := exec.Command("docker", kind, "ls", "-q", "--filter", "name="+net).Output()
			if ids := strings.Fields(string(out)); len(ids) > 0 {
				t.Errorf("the quick start's clean-up left %ss: %v", kind, ids)
				exec.Command("docker", append([]string{kind, "rm", "-f"}, ids...)...).Run()
			}
		}
	})

	// grep reads the whole log (not -q): under pipefail, docker logs
	// killed by SIGPIPE when grep -q stops early fails a pipeline that
	// matched.
	wait := func(project, want string) string {
		return fmt.Sprintf(`for i in $(seq 600); do docker logs $(docker ps -q --filter name=%s) 2>&1 | grep -c %q >/dev/null && break; sleep 0.2; done
docker logs $(docker ps -q --filter name=%s) 2>&1 | grep -c %q >/dev/null || { echo "%s never printed %s:"; docker logs $(docker ps -aq --filter name=%[1]s) 2>&1 | tail -20; exit 1; }
`, project, want, project, want, project, want)
	}
	script := blocks[0] + "\n" + wait(net+"[-_]a[-_]domain", "ready in") + wait(net+"[-_]b[-_]domain", "ready in") +
		blocks[1] + "\n" + blocks[2] + "\n" + wait(net+"-a-client[-_]sidecar", "up in") + blocks[3]
	out := sh(t, dir, compose, script)
	if !strings.Contains(out, "b.example ") || !strings.Contains(out, "from bundle endpoint") {
		t.Errorf("federation list does not show b.example trusted:\n%s", out)
	}
	if !strings.Contains(out, "3 packets transmitted, 3 received") {
		t.Errorf("the client's app did not reach the endpoint's:\n%s", out)
	}
}

// shellBlocks are the ```sh blocks of the section whose title starts with
// heading.
func shellBlocks(md, heading string) []string {
	start := strings.Index(md, "\n"+heading)
	if start < 0 {
		return nil
	}
	section := md[start+1+len(heading):]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// defs are the shell functions the blocks define, for the clean-up.
func defs(blocks []string) string {
	var b strings.Builder
	for _, block := range blocks {
		for _, l := range strings.Split(block, "\n") {
			if regexp.MustCompile(`^\w+\(\) \{`).MatchString(l) {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// sh runs script in bash in dir, failing on its first failing command,
// with `docker compose` running docker-compose where compose v2 is
// missing; it returns the output.
func sh(t *testing.T, dir string, compose []string, script string) string {
	t.Helper()
	shim := ""
	if compose[0] == "docker-compose" {
		shim = `docker() { if [ "$1" = compose ]; then shift; command docker-compose "$@"; else command docker "$@"; fi; }` + "\n"
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", shim+script)
	cmd.Dir = dir
	timer := time.AfterFunc(10*time.Minute, func() { cmd.Process.Kill() })
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("the README's commands failed: %v\n%s", err, out)
	}
	return string(out)
}

// freeSubnet is a 10.X.Y prefix no Docker network uses.
func freeSubnet(t *testing.T) string {
	out, _ := exec.Command("docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", "bridge").Output()
	used := string(out)
	ids, _ := exec.Command("docker", "network", "ls", "-q").Output()
	for _, id := range strings.Fields(string(ids)) {
		o, _ := exec.Command("docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id).Output()
		used += string(o)
	}
	for i := 0; i < 100; i++ {
		b := make([]byte, 2)
		rand.Read(b)
		prefix := fmt.Sprintf("10.%d.%d", 150+int(b[0])%50, b[1])
		if !strings.Contains(used, prefix+".") {
			return prefix
		}
	}
	t.Fatal("no free 10.x.y.0/24")
	return ""
}

// Each compose file, given nothing, stops with what to set: the message of
// its first required variable, not a container that starts wrong.
func TestComposeFilesSayWhatIsMissing(t *testing.T) {
	compose := requireDocker(t)
	for file, want := range map[string]string{
		"domain.yaml":     "set VWIRE_DOMAIN to this domain's DNS name",
		"production.yaml": "set VWIRE_DOMAIN to this domain's DNS name",
		"endpoint.yaml":   "set VWIRE_SERVICE to the network service the endpoint provides",
		"client.yaml":     "set VWIRE_CONNECT to the service to connect to",
	} {
		cmd := exec.Command(compose[0], append(compose[1:], "-p", "vwire-missing", "-f", filepath.Join(root, "deploy/compose", file), "config")...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("%s with nothing set: %v\n%s\nwant %q", file, err, out, want)
		}
	}
	// With what they need, they are valid.
	cmd := exec.Command(compose[0], append(compose[1:], "-p", "vwire-missing", "-f", filepath.Join(root, "deploy/compose/production.yaml"), "config", "-q")...)
	cmd.Env = append(os.Environ(), "VWIRE_DOMAIN=dc.example", "VWIRE_PROXY1_IP=192.0.2.30", "VWIRE_PROXY2_IP=192.0.2.31", "VWIRE_GATEWAY_IP=192.0.2.32", "VWIRE_DNS_SERVER=192.0.2.53:53")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("production.yaml with its variables: %v\n%s", err, out)
	}
}
