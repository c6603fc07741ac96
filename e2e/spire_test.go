package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// spireDomain is one trust domain run by a real SPIRE server and agent.
type spireDomain struct {
	td                    string
	dir                   string
	serverSock, agentSock string
	port, bundlePort      int
}

func (s *spireDomain) serverCmd(t *testing.T, server string, args ...string) string {
	t.Helper()
	args = append(args, "-socketPath", s.serverSock)
	out, err := exec.Command(server, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("spire-server %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// startProcess runs a command until the test ends, logging its output.
func startProcess(t *testing.T, name string, cmd *exec.Cmd) {
	t.Helper()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			LogOutput(t, name, sc.Text())
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear within 30s", path)
}

// Two real SPIRE servers federated through their own bundle endpoints, an
// agent each (join token, unix workload attestation): vwire domains take
// their SVIDs from the agents; a component of a.example makes an
// authorized call to b.example; an unregistered workload gets no SVID and
// is refused.
func TestSPIREFederation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two SPIRE servers and agents")
	}
	server, agent := ToolPath(t, "spire-server"), ToolPath(t, "spire-agent")
	// Unix sockets have short paths: keep the directory near the root.
	dir, err := os.MkdirTemp("", "vw-spire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	vwireBin := buildVwire(t, dir)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	doms := map[string]*spireDomain{}
	for _, td := range []string{"a.example", "b.example"} {
		d := &spireDomain{td: td, dir: filepath.Join(dir, td[:1]), port: FreePort(t), bundlePort: FreePort(t)}
		d.serverSock, d.agentSock = filepath.Join(d.dir, "server.sock"), filepath.Join(d.dir, "agent.sock")
		os.MkdirAll(d.dir, 0o700)
		doms[td] = d
	}
	peerOf := map[string]string{"a.example": "b.example", "b.example": "a.example"}
	for td, d := range doms {
		p := doms[peerOf[td]]
		conf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "WARN"
  federation {
    bundle_endpoint {
      address = "127.0.0.1"
      port = %d
      refresh_hint = "5s"
      profile "https_spiffe" {}
    }
    federates_with %q {
      bundle_endpoint_url = "https://127.0.0.1:%d"
      bundle_endpoint_profile "https_spiffe" {
        endpoint_spiffe_id = "spiffe://%s/spire/server"
      }
    }
  }
  experimental { cache_reload_interval = "1s" }
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
}
`, d.port, d.serverSock, td, filepath.Join(d.dir, "data"), d.bundlePort, p.td, p.bundlePort, p.td, filepath.Join(d.dir, "data", "datastore.sqlite3"))
		os.WriteFile(filepath.Join(d.dir, "server.conf"), []byte(conf), 0o600)
		startProcess(t, "spire-server "+td, exec.Command(server, "run", "-config", filepath.Join(d.dir, "server.conf")))
	}
	for _, d := range doms {
		waitForFile(t, d.serverSock)
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if exec.Command(server, "healthcheck", "-socketPath", d.serverSock).Run() == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("spire-server %s not healthy in 30s", d.td)
			}
		}
	}
	// Bootstrap federation once; the servers refresh the bundles after that.
	for td, d := range doms {
		p := doms[peerOf[td]]
		bundle := filepath.Join(dir, p.td+".bundle")
		os.WriteFile(bundle, []byte(p.serverCmd(t, server, "bundle", "show", "-format", "spiffe")), 0o600)
		d.serverCmd(t, server, "bundle", "set", "-format", "spiffe", "-id", "spiffe://"+p.td, "-path", bundle)
	}
	for td, d := range doms {
		p := doms[peerOf[td]]
		agentID := "spiffe://" + td + "/agent/" + td[:1]
		token := strings.TrimSpace(strings.TrimPrefix(d.serverCmd(t, server, "token", "generate", "-spiffeID", agentID), "Token:"))
		register := func(path, id string) {
			d.serverCmd(t, server, "entry", "create", "-parentID", agentID, "-spiffeID", "spiffe://"+td+id,
				"-selector", "unix:path:"+path, "-federatesWith", "spiffe://"+p.td)
		}
		// The vwire binary is the domain (proxy) and, run as the CLI, its
		// admin; this test binary plays a.example's proxy calling b.example.
		register(vwireBin, federation.ProxyPath)
		register(vwireBin, federation.AdminPath)
		if td == "a.example" {
			register(self, federation.ProxyPath)
		}
		conf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
  experimental { sync_interval = "1s" }
}
plugins {
  NodeAttestor "join_token" { plugin_data {} }
  KeyManager "memory" { plugin_data {} }
  WorkloadAttestor "unix" { plugin_data { discover_workload_path = true } }
}
`, filepath.Join(d.dir, "agent"), d.port, d.agentSock, td)
		os.WriteFile(filepath.Join(d.dir, "agent.conf"), []byte(conf), 0o600)
		startProcess(t, "spire-agent "+td, exec.Command(agent, "run", "-config", filepath.Join(d.dir, "agent.conf"), "-joinToken", token))
	}

	// A vwire domain on each side, with its SVIDs from its agent.
	addrs := map[string]string{}
	for td, d := range doms {
		waitForFile(t, d.agentSock)
		addrs[td] = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		StartVwire(t, vwireBin, nil, "domain", "--name", td, "--data-dir", filepath.Join(d.dir, "vwire"), "--listen", addrs[td], "--spiffe-socket", d.agentSock)
	}
	cli := func(td string, args ...string) (string, error) {
		out, err := exec.Command(vwireBin, append(args, "--registry", addrs[td], "--spiffe-socket", doms[td].agentSock)...).CombinedOutput()
		return string(out), err
	}
	// b binds a.example to its trust domain (SPIRE already federates the
	// bundles), and offers a service.
	bundleA := filepath.Join(dir, "a.example.bundle")
	if out, err := cli("b.example", "federation", "add", "a.example", "--bundle-endpoint", fmt.Sprintf("https://127.0.0.1:%d", doms["a.example"].bundlePort),
		"--bundle", bundleA, "--endpoint-id", "spiffe://a.example/spire/server"); err != nil {
		t.Fatalf("federation add on b: %v\n%s", err, out)
	}
	manifest := filepath.Join(dir, "svc.yaml")
	os.WriteFile(manifest, []byte("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: svc}\nspec: {payload: IP}\n---\n"+
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: nse-b}\nspec: {networkServiceNames: [svc]}\n"), 0o600)
	if out, err := cli("b.example", "apply", "-f", manifest); err != nil {
		t.Fatalf("apply on b: %v\n%s", err, out)
	}

	// a.example's proxy (this test binary, registered with a's SPIRE) looks
	// up svc in b.example: an authorized cross-domain call on SPIRE SVIDs.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tdA, tdB := spiffeid.RequireTrustDomainFromString("a.example"), spiffeid.RequireTrustDomainFromString("b.example")
	src, err := federation.WorkloadSource(ctx, doms["a.example"].agentSock, func(id spiffeid.ID) bool { return id == federation.ProxyID(tdA) })
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	conn, err := federation.DialPeer(addrs["b.example"], src, "a.example", federation.Peer{Domain: "b.example", TrustDomain: tdB})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var found []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		stream, err := registrypb.NewRegistryClient(conn).Find(ctx, &registrypb.FindRequest{Service: "svc"})
		var resp *registrypb.FindResponse
		if err == nil {
			resp, err = stream.Recv()
		}
		if err == nil {
			for _, e := range resp.GetSnapshot().GetEndpoints() {
				found = append(found, e.GetName())
			}
			break
		}
		// The agents may still be syncing the federated bundles.
		if time.Now().After(deadline) {
			t.Fatalf("a's proxy could not look up svc in b: %v", err)
		}
	}
	if strings.Join(found, ",") != "nse-b" {
		t.Errorf("a's proxy found %v in b, want [nse-b]", found)
	}

	// b's federation list shows what b trusts for a.example: the bundle
	// SPIRE delivers, not a fetch vwire never made.
	var rows []struct {
		Domain, Source, LastError string
		Authorities               int
	}
	out, err := cli("b.example", "federation", "list", "-o", "json")
	if err == nil {
		err = json.Unmarshal([]byte(out), &rows)
	}
	if err != nil || len(rows) != 1 {
		t.Fatalf("federation list on b: %v\n%s", err, out)
	}
	if r := rows[0]; r.Domain != "a.example" || r.Source != federation.FromSPIRE || r.Authorities < 1 || r.LastError != "" {
		t.Errorf("federation list on b: %+v", r)
	}
	// a's proxy may act for a's workloads only: naming a workload of
	// another trust domain is refused, and says so.
	stream, err := registrypb.NewRegistryClient(conn).Find(metadata.AppendToOutgoingContext(ctx, registry.ClientHeader, "spiffe://c.example/ns/x"),
		&registrypb.FindRequest{Service: "svc"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "may not act for spiffe://c.example/ns/x of another trust domain") {
		t.Errorf("a's proxy acting for c's workload: %v", err)
	}

	// A workload SPIRE does not know (the same binary at another path)
	// gets no SVID and reaches nothing.
	stranger := filepath.Join(dir, "stranger")
	copyFile(t, vwireBin, stranger)
	sout, err := exec.Command(stranger, "get", "services", "--registry", addrs["a.example"], "--spiffe-socket", doms["a.example"].agentSock).CombinedOutput()
	if err == nil || !strings.Contains(string(sout), "is this workload registered with SPIRE?") {
		t.Errorf("an unregistered workload: err=%v\n%s", err, sout)
	}
	// And b refuses a's proxy speaking for a domain it does not bind.
	spoof, err := federation.DialPeer(addrs["b.example"], src, "c.example", federation.Peer{Domain: "b.example", TrustDomain: tdB})
	if err != nil {
		t.Fatal(err)
	}
	defer spoof.Close()
	stream, err = registrypb.NewRegistryClient(spoof).Find(ctx, &registrypb.FindRequest{Service: "svc"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a's proxy speaking for c.example: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}
