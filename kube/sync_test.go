package kube_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/kube"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

var root = func() string { d, _ := filepath.Abs(".."); return d }()

// kubectl runs kubectl and returns its output, failing the test when its
// success is not wantOK.
func kubectl(t *testing.T, k *e2e.KubeAPI, wantOK bool, stdin string, args ...string) string {
	t.Helper()
	out, err := k.Try(t, stdin, args...)
	if (err == nil) != wantOK {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	// 60 s: under make test's parallel load one kubectl call took 2 s and
	// a conflict's status once took longer than 20 s to show (not seen
	// alone: the sync itself takes milliseconds).
	for deadline := start.Add(60 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 60 s: %s", what)
		}
	}
	return time.Since(start)
}

// A Kubernetes domain: its NetworkService objects, applied with kubectl,
// are its services, within a second; what vwire refuses says why in the
// object's status, and the service stored before stays; the endpoints
// registered with vwire appear as NetworkServiceEndpoint objects with their
// expiry; the registry API leaves services to the objects.
func TestSync(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, true, "", "apply", "-f", filepath.Join(root, "deploy/helm/vwire/crds"))
	kubectl(t, k, true, "", "wait", "--for", "condition=established", "--timeout", "30s", "crd/networkservices.networkservicemesh.io", "crd/networkserviceendpoints.networkservicemesh.io")
	kubectl(t, k, true, "", "create", "namespace", "vwire")

	cfg := domain.NewConfig()
	cfg.Name, cfg.DataDir, cfg.Listen = "a.example", t.TempDir(), "127.0.0.1:0"
	cfg.ServicesElsewhere = "its Kubernetes NetworkService objects (kubectl apply -f FILE)"
	cfg.Logger = slog.New(slog.NewTextHandler(logWriter{t}, nil))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	d, err := domain.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	dyn := dynamicClient(t, k)
	// Two replicas of the proxy; the first leads.
	replica := func(identity string) (stop func()) {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			(&kube.Sync{Client: dyn, Store: d.Store, Namespace: "vwire", Identity: identity, Log: cfg.Logger.With("replica", identity), LeaseDuration: 4 * time.Second}).Run(ctx)
		}()
		stop = func() { cancel(); <-done }
		t.Cleanup(stop)
		return stop
	}
	holder := func() string {
		return kubectl(t, k, true, "", "get", "lease", "-n", "vwire", "vwire-sync", "-o", "jsonpath={.spec.holderIdentity}")
	}
	stopFirst := replica("first")
	waitFor(t, "the first replica leads", func() bool { return holder() == "first" })
	replica("second")

	stored := func(name string) (*registrypb.NetworkService, error) { return d.Store.GetService(ctx, name) }
	// The seed's reference manifest, applied with kubectl.
	start := time.Now()
	kubectl(t, k, true, "", "apply", "-f", filepath.Join(root, "registry/testdata/secure-intranet-connectivity.yaml"))
	applied := time.Since(start)
	waitFor(t, "the service is stored", func() bool { _, err := stored("secure-intranet-connectivity"); return err == nil })
	t.Logf("kubectl apply took %v; stored %v after it started", applied.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	row := func(name string) string {
		return kubectl(t, k, true, "", "get", "netsvc", name, "-o", "jsonpath={.spec.payload} {.status.rules} {.status.endpoints} {.status.conditions[0].reason}")
	}
	waitFor(t, "kubectl get shows it taken", func() bool { return row("secure-intranet-connectivity") == "IP 2 0 Stored" })
	if out := kubectl(t, k, true, "", "get", "netsvc"); !strings.Contains(out, "PAYLOAD") || !strings.Contains(out, "RULES") || !strings.Contains(out, "ENDPOINTS") {
		t.Errorf("kubectl get netsvc has no payload, rules and endpoints columns:\n%s", out)
	}

	// Endpoints registered with vwire appear, with their expiry, and count.
	ep := &registrypb.Endpoint{Name: "firewall-1", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Labels: map[string]string{"app": "firewall"}, Url: "tcp://10.0.0.1:5001"}
	if _, err := d.Store.RegisterEndpoint(ctx, "spiffe://a.example/ns/x", ep, time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the endpoint's object", func() bool {
		out := kubectl(t, k, true, "", "get", "nse", "-n", "vwire", "firewall-1", "-o", "jsonpath={.status.expiresAt} {.spec.network_service_names} {.metadata.labels.app}")
		return strings.Contains(out, "T") && strings.Contains(out, "secure-intranet-connectivity") && strings.HasSuffix(out, "firewall")
	})
	waitFor(t, "the service counts it", func() bool { return row("secure-intranet-connectivity") == "IP 2 1 Stored" })
	if err := d.Store.UnregisterEndpoint(ctx, "spiffe://a.example/ns/x", "firewall-1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the endpoint's object goes", func() bool {
		out, _ := k.Try(t, "", "get", "nse", "-n", "vwire", "firewall-1")
		return strings.Contains(out, "NotFound")
	})

	// NSM's own manifests apply as they are.
	kubectl(t, k, true, "", "create", "namespace", "nsm-system")
	kubectl(t, k, true, "", "apply", "-f", filepath.Join(root, "registry/testdata/nsm-manifests.yaml"))
	waitFor(t, "NSM's chain service is stored", func() bool {
		s, err := stored("chain")
		return err == nil && len(s.GetMatches()) == 4 && s.GetMatches()[2].GetRoutes()[0].GetDestinationSelector()["nodeName"] == "{{.nodeName}}"
	})

	// The schema refuses what it can; vwire says the rest in the status,
	// and keeps what it stored.
	bad := "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: secure-intranet-connectivity}\nspec: {payload: QUIC}\n"
	if out := kubectl(t, k, false, bad, "apply", "-f", "-"); !strings.Contains(out, `Unsupported value: "QUIC"`) {
		t.Errorf("payload QUIC: %s", out)
	}
	bad = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: other}\nspec: {name: another, payload: IP}\n"
	if out := kubectl(t, k, false, bad, "apply", "-f", "-"); !strings.Contains(out, "spec.name differs from metadata.name") {
		t.Errorf("spec.name: %s", out)
	}
	bad = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: secure-intranet-connectivity}\nspec:\n  payload: IP\n  matches: [{routes: [{destination_selector: {app: \"{{.app\"}}]}]\n"
	kubectl(t, k, true, bad, "apply", "-f", "-")
	waitFor(t, "the refusal in the status", func() bool {
		out := kubectl(t, k, true, "", "get", "netsvc", "secure-intranet-connectivity", "-o", "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}")
		return strings.HasPrefix(out, "Invalid: ") && strings.Contains(out, `template "{{.app"`)
	})
	if s, err := stored("secure-intranet-connectivity"); err != nil || len(s.GetMatches()) != 2 {
		t.Errorf("a refused change took the stored service away or changed it: %v, %v", s, err)
	}

	// One name, one service: the second object of a name says so.
	kubectl(t, k, true, "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: chain, namespace: default}\nspec: {payload: IP}\n", "apply", "-f", "-")
	waitFor(t, "the conflict in the newer object's status", func() bool {
		out := kubectl(t, k, true, "", "get", "netsvc", "-n", "default", "chain", "-o", "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}")
		return strings.Contains(out, `Conflict: network service "chain" is defined by nsm-system/chain already`)
	})
	if s, _ := stored("chain"); s.GetPayload() != registrypb.Payload_ETHERNET {
		t.Error("the newer object of a name replaced the older one's service")
	}

	// The registry API leaves services to the objects, and says so.
	admin, err := federation.LoadCredentials(filepath.Join(cfg.DataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := federation.DialDomain(d.Addr().String(), admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = registrypb.NewRegistryClient(conn).RegisterService(ctx, &registrypb.RegisterServiceRequest{Service: &registrypb.NetworkService{Name: "x", Payload: registrypb.Payload_IP}})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "this domain's network services are its Kubernetes NetworkService objects (kubectl apply -f FILE)") {
		t.Errorf("defining a service through the registry API: %v", err)
	}

	// The leader goes; the other replica takes over, and what was deleted
	// meanwhile goes.
	stopFirst()
	kubectl(t, k, true, "", "delete", "netsvc", "-n", "default", "chain")
	took := waitFor(t, "the second replica leads", func() bool { return holder() == "second" })
	t.Logf("the second replica leads %v after the first stopped", took.Round(time.Millisecond))

	// kubectl delete takes the service away.
	kubectl(t, k, true, "", "delete", "netsvc", "secure-intranet-connectivity")
	waitFor(t, "the deleted object's service goes", func() bool {
		_, err := stored("secure-intranet-connectivity")
		return errors.Is(err, registry.ErrNotFound)
	})
}

func dynamicClient(t *testing.T, k *e2e.KubeAPI) dynamic.Interface {
	rc, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return dyn
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	e2e.LogOutput(w.t, "domain", strings.TrimSpace(string(p)))
	return len(p), nil
}
