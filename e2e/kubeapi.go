package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// KubeAPI is a Kubernetes control plane for tests: an etcd and a
// kube-apiserver from the tools cache (`make tools`), on loopback, with an
// admin token. It has no nodes and runs no pods: CRDs, objects, watches
// and webhooks are what it is for. Kubeconfig is a file for kubectl and
// client-go.
type KubeAPI struct {
	URL, Token, CAFile, Kubeconfig string
}

// StartKubeAPI starts a control plane that stops when the test ends.
func StartKubeAPI(t testing.TB) *KubeAPI {
	t.Helper()
	etcdBin, apiBin := ToolPath(t, "etcd"), ToolPath(t, "kube-apiserver")
	dir := t.TempDir()
	client, peer, secure := FreePort(t), FreePort(t), FreePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", client)
	startTool(t, "etcd", exec.Command(etcdBin, "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer), "--log-level", "error"))

	caCert, caKey := newCA(t, "vwire-test-kube-ca")
	servingCert, servingKey := issue(t, caCert, caKey, "kube-apiserver", net.ParseIP("127.0.0.1"))
	sa, err := x509.MarshalECPrivateKey(mustKey(t)) // kube-apiserver reads SEC1, not PKCS#8
	if err != nil {
		t.Fatal(err)
	}
	saKey := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sa})
	k := &KubeAPI{URL: fmt.Sprintf("https://127.0.0.1:%d", secure), CAFile: filepath.Join(dir, "ca.pem")}
	b := make([]byte, 16)
	rand.Read(b)
	k.Token = hex.EncodeToString(b)
	files := map[string][]byte{
		"ca.pem": pemCert(caCert), "serving.pem": pemCert(servingCert), "serving.key": pemKey(t, servingKey), "sa.key": saKey,
		"tokens.csv": []byte(k.Token + ",admin,admin,system:masters\n"),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	exited := startTool(t, "kube-apiserver", exec.Command(apiBin,
		"--etcd-servers", etcdURL, "--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(secure),
		"--advertise-address", "127.0.0.1", "--cert-dir", filepath.Join(dir, "certs"),
		"--tls-cert-file", filepath.Join(dir, "serving.pem"), "--tls-private-key-file", filepath.Join(dir, "serving.key"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"), "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", filepath.Join(dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"), "--service-cluster-ip-range", "10.96.0.0/24",
		"--disable-admission-plugins", "ServiceAccount", "--v", "0"))

	// Ready when /readyz answers.
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.Token)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-exited:
			t.Fatal("kube-apiserver exited (its output is above)")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("kube-apiserver not ready within 60 s (its output is above)")
		}
	}
	k.Kubeconfig = filepath.Join(dir, "kubeconfig")
	conf := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority: %q}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: test, context: {cluster: test, user: admin, namespace: default}}]
current-context: test
`, k.URL, k.CAFile, k.Token)
	if err := os.WriteFile(k.Kubeconfig, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// Kubectl runs the cached kubectl against the control plane.
func (k *KubeAPI) Kubectl(t testing.TB, args ...string) *exec.Cmd {
	return exec.Command(ToolPath(t, "kubectl"), append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
}

// Try runs kubectl with stdin and returns its output and whether it
// failed.
func (k *KubeAPI) Try(t testing.TB, stdin string, args ...string) (string, error) {
	cmd := k.Kubectl(t, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Run runs kubectl with stdin and returns its output, failing the test if
// kubectl fails.
func (k *KubeAPI) Run(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, err := k.Try(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// startTool runs a tool until the test ends, its output logged; the
// channel closes if it exits.
func startTool(t testing.TB, name string, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	cmd.Stdout, cmd.Stderr = logWriter{t, name}, logWriter{t, name}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return done
}

type logWriter struct {
	t    testing.TB
	name string
}

func (w logWriter) Write(p []byte) (int, error) {
	LogOutput(w.t, w.name, string(p))
	return len(p), nil
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newCA(t testing.TB, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := mustKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func issue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, ips ...net.IP) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := mustKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IPAddresses: ips, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pemKey(t testing.TB, k *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}
