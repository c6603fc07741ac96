package kube_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/kube"
)

// The proxies of a Kubernetes domain share one built-in CA through a
// Secret: replicas starting together end up with the same CA, a restarted
// one finds it again, and a Secret that is not this domain's CA is refused
// with the reason.
func TestCASecret(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, true, "", "create", "namespace", "vwire")
	dyn := dynamicClient(t, k)
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("a.example")

	// Three replicas start at once.
	dirs := make([]string, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range dirs {
		dirs[i] = filepath.Join(t.TempDir(), "ca")
		wg.Go(func() { errs[i] = kube.LoadCA(ctx, dyn, "vwire", "vwire-ca", dirs[i], td) })
	}
	wg.Wait()
	roots := map[string]bool{}
	for i, dir := range dirs {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		roots[string(b)] = true
	}
	if len(roots) != 1 {
		t.Fatalf("replicas started together have %d CAs, want one", len(roots))
	}
	// What one issues, another's bundle verifies.
	a, err := federation.OpenCA(dirs[0], td)
	if err != nil {
		t.Fatal(err)
	}
	b, err := federation.OpenCA(dirs[1], td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Bundle().HasX509Authority(a.Bundle().X509Authorities()[0]) {
		t.Error("one replica's CA is not in another's bundle")
	}
	if out := kubectl(t, k, true, "", "get", "secret", "-n", "vwire", "vwire-ca", "-o", "jsonpath={.data}"); !strings.Contains(out, "ca.key") {
		t.Errorf("the Secret lacks the CA's key: %s", out)
	}

	// A restarted replica, in a fresh directory, takes the same CA.
	again := filepath.Join(t.TempDir(), "ca")
	if err := kube.LoadCA(ctx, dyn, "vwire", "vwire-ca", again, td); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(again, "ca.pem")); !roots[string(got)] {
		t.Error("a restarted replica made a CA of its own")
	}

	// Another domain's CA, and a Secret that holds none, are refused.
	err = kube.LoadCA(ctx, dyn, "vwire", "vwire-ca", filepath.Join(t.TempDir(), "ca"), spiffeid.RequireTrustDomainFromString("b.example"))
	if err == nil || !strings.Contains(err.Error(), "another trust domain") {
		t.Errorf("another domain's CA: %v", err)
	}
	kubectl(t, k, true, "", "create", "secret", "generic", "-n", "vwire", "not-a-ca", "--from-literal=ca.pem=x")
	err = kube.LoadCA(ctx, dyn, "vwire", "not-a-ca", filepath.Join(t.TempDir(), "ca"), td)
	if err == nil || !strings.Contains(err.Error(), "holds no CA (ca.pem and ca.key)") {
		t.Errorf("a Secret with no CA: %v", err)
	}
}
