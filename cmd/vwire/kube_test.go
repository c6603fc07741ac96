package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/e2e"
)

// The proxies and gateways of a Kubernetes domain with the built-in CA, as
// the chart runs them: two proxy replicas share one CA through a Secret
// and publish its bundle in a ConfigMap; a gateway pod gets its node's
// SVID for its service account token and serves the proxies with it.
func TestKubernetesIdentity(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	e2e.RequireRoot(t)
	k := e2e.StartKubeAPI(t)
	kubectl := func(stdin string, args ...string) string { t.Helper(); return k.Run(t, stdin, args...) }
	root, _ := filepath.Abs("../..")
	kubectl("", "apply", "-f", filepath.Join(root, "deploy/helm/vwire/crds"))
	kubectl("", "create", "namespace", "vwire")
	kubectl("", "create", "serviceaccount", "-n", "vwire", "gateway")
	kubectl("apiVersion: v1\nkind: Pod\nmetadata: {name: gateway-n1, namespace: vwire}\nspec:\n  nodeName: n1\n  serviceAccountName: gateway\n  containers: [{name: c, image: x}]\n", "apply", "-f", "-")

	etcd := startEtcd(t)
	attest := freeAddr(t)
	proxy := func(attestAddr string) *e2e.Process {
		args := []string{"proxy", "--name", "a.example", "--etcd-endpoints", etcd, "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(t.TempDir(), "d"),
			"--kubernetes", "--kubeconfig", k.Kubeconfig, "--kube-namespace", "vwire", "--ca-secret", "vwire-ca"}
		if attestAddr != "" {
			args = append(args, "--attest-listen", attestAddr, "--gateway-service-account", "vwire/gateway")
		}
		return e2e.StartVwire(t, vwireBin, nil, args...)
	}
	p1 := proxy(attest)
	proxy("")
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	deadline := time.Now().Add(20 * time.Second)
	for {
		cmd := k.Kubectl(t, "get", "configmap", "-n", "vwire", "vwire-ca", "-o", "jsonpath={.data.bundle\\.pem}")
		if out, err := cmd.Output(); err == nil && strings.Contains(string(out), "BEGIN CERTIFICATE") {
			os.WriteFile(bundle, out, 0o644)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no bundle in ConfigMap vwire/vwire-ca within 20 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(kubectl("", "get", "secret", "-n", "vwire", "-o", "name"), "secret/vwire-ca"); n != 1 {
		t.Fatalf("%d CA Secrets for two replicas, want one", n)
	}

	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte(kubectl("", "create", "token", "-n", "vwire", "gateway", "--bound-object-kind", "Pod", "--bound-object-name", "gateway-n1", "--audience", "vwire")), 0o600)
	gw := e2e.StartVwire(t, vwireBin, nil, "gateway", "--attest", "https://"+attest, "--trust-domain", "a.example", "--kube-token", token, "--trust-bundle", bundle,
		"--registry", p1.Ready[strings.LastIndex(p1.Ready, " ")+1:], "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(t.TempDir(), "gw"))
	if !strings.Contains(gw.Ready, "vwire gateway n1 ready") || !strings.Contains(gw.Ready, "(as spiffe://a.example/vwire/gateway/n1)") {
		t.Errorf("the gateway's ready line: %s", gw.Ready)
	}
	if p1.WaitFor(10*time.Second, "gateway SVID issued", "node=n1") == "" {
		t.Error("the proxy did not log the gateway's SVID")
	}

	// Settings that cannot work say so.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"gateway", "--attest", "https://" + attest, "--kube-token", token, "--trust-bundle", bundle}, "--attest needs --trust-domain"},
		{[]string{"gateway", "--attest", "https://" + attest, "--credentials", t.TempDir()}, "three ways to the gateway's SVID: give one"},
		{[]string{"proxy", "--name", "a.example", "--etcd-endpoints", etcd, "--kubernetes", "--kubeconfig", k.Kubeconfig, "--kube-namespace", "vwire", "--attest-listen", "127.0.0.1:0"},
			"--attest-listen needs --ca-secret"},
		{[]string{"proxy", "--name", "a.example", "--etcd-endpoints", etcd, "--kubernetes", "--kubeconfig", k.Kubeconfig, "--kube-namespace", "vwire", "--ca-secret", "x", "--attest-listen", "127.0.0.1:0"},
			"--attest-listen needs --gateway-service-account NAMESPACE/NAME"},
	} {
		out, err := exec.Command(vwireBin, c.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("vwire %v: %v\n%s\nwant %q", c.args, err, out, c.want)
		}
	}
}

// With SPIRE there is no built-in CA: the webhook's certificate comes from
// a CA of its own, made once in its Secret and taken by every replica; the
// flags that cannot go together are refused.
func TestWebhookCAWithSPIRE(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	k.Run(t, "", "create", "namespace", "vwire")
	replica := func(caSecret, webhookCASecret, spiffeSocket string) (*kubeFlags, error) {
		cfg := domain.NewConfig()
		cfg.Name, cfg.DataDir, cfg.SpiffeSocket = "a.example", t.TempDir(), spiffeSocket
		kf := &kubeFlags{enabled: true, kubeconfig: k.Kubeconfig, namespace: "vwire", caSecret: caSecret, webhookCASecret: webhookCASecret,
			webhookListen: "127.0.0.1:0", webhookHost: "vwire-webhook.vwire.svc", sidecarImage: "vwire:dev", sidecarTimeout: time.Minute}
		return kf, kf.configure(context.Background(), cfg)
	}
	const socket = "/run/spire/sockets/agent.sock" // configure does not dial it
	first, err := replica("", "vwire-webhook-ca", socket)
	if err != nil {
		t.Fatal(err)
	}
	second, err := replica("", "vwire-webhook-ca", socket)
	if err != nil {
		t.Fatal(err)
	}
	if first.webhookCA == nil || !first.webhookCA.Bundle().Equal(second.webhookCA.Bundle()) {
		t.Error("two replicas serve the webhook under different CAs: the API server trusts one caBundle")
	}
	if out, err := k.Try(t, "", "get", "secret", "-n", "vwire", "vwire-webhook-ca", "-o", "name"); err != nil {
		t.Errorf("the webhook's CA is not kept in its Secret: %v\n%s", err, out)
	}
	for _, c := range []struct{ caSecret, webhookCASecret, socket, want string }{
		{"", "", socket, "--webhook-listen needs --ca-secret"},
		{"vwire-ca", "vwire-webhook-ca", "", "--webhook-ca-secret is for a domain whose SVIDs come from SPIRE"},
		{"", "vwire-webhook-ca", "", "--webhook-ca-secret is for a domain whose SVIDs come from SPIRE"},
	} {
		if _, err := replica(c.caSecret, c.webhookCASecret, c.socket); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--ca-secret %q --webhook-ca-secret %q --spiffe-socket %q: %v, want %q", c.caSecret, c.webhookCASecret, c.socket, err, c.want)
		}
	}
}
