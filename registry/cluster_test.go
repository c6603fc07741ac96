package registry_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

type member struct {
	name, clientURL string
	cmd             *exec.Cmd
}

// startCluster starts a 3-member etcd cluster of separate etcd processes on
// loopback and stops them when the test ends.
func startCluster(t *testing.T) []*member {
	bin := e2e.ToolPath(t, "etcd")
	var ports []int
	for range 6 {
		ports = append(ports, e2e.FreePort(t))
	}
	var ms []*member
	var initial []string
	for i := 0; i < 3; i++ {
		m := &member{name: fmt.Sprintf("m%d", i), clientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[i])}
		ms = append(ms, m)
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, ports[3+i]))
	}
	dir := t.TempDir()
	for i, m := range ms {
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[3+i])
		m.cmd = exec.Command(bin,
			"--name", m.name, "--data-dir", filepath.Join(dir, m.name),
			"--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "vwire-test", "--log-level", "error")
		logf, err := os.Create(filepath.Join(dir, m.name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		if err := m.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			m.cmd.Process.Kill()
			m.cmd.Wait()
			logf.Close()
		})
	}
	return ms
}

func leaderOf(t *testing.T, ms []*member) *member {
	t.Helper()
	var urls []string
	for _, m := range ms {
		urls = append(urls, m.clientURL)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for _, m := range ms {
			st, err := cli.Status(ctx(t), m.clientURL)
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return m
			}
		}
	}
	t.Fatal("the etcd cluster elected no leader in 20s")
	return nil
}

// The registry on a real 3-member etcd cluster keeps every registration and
// goes on taking writes when the leader is killed mid-test.
func TestRegistryOnEtcdClusterSurvivesLeaderLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three etcd processes")
	}
	ms := startCluster(t)
	leader := leaderOf(t, ms)
	var urls []string
	for _, m := range ms {
		urls = append(urls, m.clientURL)
	}
	d := startDomain(t, "a.example", func(c *registry.Config) { c.EtcdEndpoints = urls })
	nse := d.client("/nse")
	if _, err := d.admin().RegisterService(ctx(t), &registrypb.RegisterServiceRequest{Service: &registrypb.NetworkService{Name: "svc", Payload: registrypb.Payload_IP}}); err != nil {
		t.Fatal(err)
	}

	const total, killAt = 300, 100
	var (
		mu       sync.Mutex
		failures int
		gap      time.Duration
		afterOK  int
	)
	killed := make(chan struct{})
	register := func(i int) {
		// Like an endpoint, retry a failed registration until it lands.
		var firstFail time.Time
		for deadline := time.Now().Add(20 * time.Second); ; {
			c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, err := nse.RegisterEndpoint(c, &registrypb.RegisterEndpointRequest{
				Endpoint: &registrypb.Endpoint{Name: fmt.Sprintf("nse-%03d", i), NetworkServiceNames: []string{"svc"}},
			})
			cancel()
			mu.Lock()
			if err == nil {
				if !firstFail.IsZero() && time.Since(firstFail) > gap {
					gap = time.Since(firstFail)
				}
				select {
				case <-killed:
					afterOK++
				default:
				}
				mu.Unlock()
				return
			}
			failures++
			mu.Unlock()
			if firstFail.IsZero() {
				firstFail = time.Now()
			}
			if time.Now().After(deadline) {
				t.Errorf("nse-%03d not registered after 20s: %v", i, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for i := 0; i < total; i++ {
		if i == killAt {
			t.Logf("killing the leader %s (SIGKILL)", leader.name)
			leader.cmd.Process.Signal(syscall.SIGKILL)
			close(killed)
		}
		register(i)
	}
	t.Logf("failed attempts %d, longest gap %v, registrations after the kill %d", failures, gap.Round(time.Millisecond), afterOK)
	if afterOK != total-killAt {
		t.Errorf("writes after the kill: %d of %d landed", afterOK, total-killAt)
	}
	list, err := nse.ListEndpoints(ctx(t), &registrypb.ListEndpointsRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEndpoints()) != total {
		t.Errorf("%d of %d registrations survived the leader's loss", len(list.GetEndpoints()), total)
	}
	// Leases still work: an endpoint registered before the kill refreshes.
	if _, err := nse.RefreshEndpoint(ctx(t), &registrypb.RefreshEndpointRequest{Name: "nse-000"}); err != nil {
		t.Errorf("refresh after the leader's loss: %v", err)
	}
}
