package kube_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/kube"
)

// Pods created with kubectl get their vWire sidecars from the webhook the
// API server calls, which it trusts through the caBundle the webhook keeps;
// a pod whose annotation does not parse is refused with the reason.
func TestWebhook(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, true, "", "create", "namespace", "apps")
	ca, err := federation.OpenCA(filepath.Join(t.TempDir(), "ca"), spiffeid.RequireTrustDomainFromString("a.example"))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	kubectl(t, k, true, `apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: vwire-inject}
webhooks:
  - name: inject.vwire.io
    clientConfig: {url: "https://localhost:`+port+`/inject"}
    rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}]
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 5
`, "apply", "-f", "-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(logWriter{t}, nil))
	w := &kube.Webhook{Client: dynamicClient(t, k), CA: ca, Host: "localhost", Configuration: "vwire-inject", Log: log,
		Injector: &kube.Injector{Image: "vwire:dev", PullPolicy: "IfNotPresent", SocketDir: "/run/vwire", StartupTimeout: time.Minute, Log: log}}
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx, lis) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the webhook's CA bundle in its configuration", func() bool {
		return kubectl(t, k, true, "", "get", "mutatingwebhookconfiguration", "vwire-inject", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}") != ""
	})

	pod := func(name, annotations string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: apps\n  labels: {app: web}\n  annotations: {" + annotations + "}\nspec:\n  containers: [{name: app, image: app}]\n"
	}
	kubectl(t, k, true, pod("client", `vwire.io/connect: "marshas-app-connectivity@dc.marsha.example/nsm0?tier=front"`), "apply", "-f", "-")
	got := kubectl(t, k, true, "", "get", "pod", "-n", "apps", "client", "-o", "jsonpath={.spec.initContainers[0].name} {.spec.initContainers[0].restartPolicy} {.spec.initContainers[0].args}")
	if !strings.HasPrefix(got, "vwire-nsm0 Always ") || !strings.Contains(got, `"marshas-app-connectivity@dc.marsha.example"`) || !strings.Contains(got, `"app=web,tier=front,vwire.io/pod-namespace=$(POD_NAMESPACE)"`) {
		t.Errorf("the annotated pod's sidecar: %s", got)
	}
	if got := kubectl(t, k, true, "", "get", "pod", "-n", "apps", "client", "-o", "jsonpath={.spec.containers[*].name}"); got != "app" {
		t.Errorf("the pod's own containers changed: %s", got)
	}
	kubectl(t, k, true, pod("nsm", `networkservicemesh.io: "kernel://secure-intranet-connectivity/nsm-1?app=firewall"`), "apply", "-f", "-")
	if got := kubectl(t, k, true, "", "get", "pod", "-n", "apps", "nsm", "-o", "jsonpath={.spec.initContainers[0].name}"); got != "vwire-nsm-1" {
		t.Errorf("NSM's annotation: sidecar %q", got)
	}
	kubectl(t, k, true, pod("plain", ""), "apply", "-f", "-")
	if got := kubectl(t, k, true, "", "get", "pod", "-n", "apps", "plain", "-o", "jsonpath={.spec.initContainers}"); got != "" {
		t.Errorf("a pod without vWires got %s", got)
	}
	out := kubectl(t, k, false, pod("bad", `vwire.io/connect: "svc@b.example/this-name-is-too-long"`), "apply", "-f", "-")
	if !strings.Contains(out, `admission webhook "inject.vwire.io" denied the request: vwire: annotation vwire.io/connect: "svc@b.example/this-name-is-too-long": interface "this-name-is-too-long"`) {
		t.Errorf("a pod with a bad annotation: %s", out)
	}
	// A rotation: the configuration trusts the new root before it issues,
	// and pods are still admitted once it does.
	caBundle := func() string {
		return kubectl(t, k, true, "", "get", "mutatingwebhookconfiguration", "vwire-inject", "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
	}
	before := caBundle()
	if err := ca.Prepare(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the prepared root in the configuration's caBundle", func() bool { return caBundle() != before })
	if err := ca.Activate(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pods admitted after the rotation", func() bool {
		_, err := k.Try(t, pod("after-rotation", ""), "apply", "-f", "-")
		return err == nil
	})
}
