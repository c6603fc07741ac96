package helm

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vwire/vwire/e2e"
)

const chart = "vwire"

// peerBundle is a bootstrap bundle as a peer's operator hands it over.
const peerBundle = "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAAMB4XDTI2MDEwMTAwMDAwMFoX\n-----END CERTIFICATE-----\n"

// valueSets are the shapes of a release the chart must render into objects
// the API server takes.
var valueSets = map[string][]string{
	"defaults": {"--set", "domain.name=public-k8s.marsha.example"},
	"three etcd members, NodePort, a peer": {"--set", "domain.name=public-k8s.marsha.example", "--set", "etcd.replicas=3", "--set", "etcd.storage.size=",
		"--set", "proxy.service.type=NodePort", "--set", "proxy.service.nodePorts.grpc=30701", "--set", "proxy.advertise=172.18.0.2:30701",
		"--set", "federation.peers[0].domain=dc.marsha.example", "--set", "federation.peers[0].bundleEndpoint=https://172.18.0.9:7002",
		"--set-string", "federation.peers[0].bundle=" + peerBundle, "--set", "dns.server=172.18.0.9:53", "--set", "gateway.intraDomainTunnel=wireguard"},
	"SPIRE, external etcd": {"--set", "domain.name=private-k8s.marsha.example", "--set", "identity.mode=spire", "--set", "etcd.mode=external",
		"--set", "etcd.external.endpoints={https://etcd-0.example:2379,https://etcd-1.example:2379}", "--set", "etcd.external.tlsSecret=etcd-client"},
	"metrics and traces": {"--set", "domain.name=public-k8s.marsha.example", "--set", "observability.metrics.enabled=true",
		"--set", "observability.otlpEndpoint=otel-collector.monitoring:4317"},
}

func helm(t *testing.T, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(e2e.ToolPath(t, "helm"), args...)
	cmd.Dir = "."
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	if kubeconfig != "" {
		cmd.Env = append(cmd.Env, "KUBECONFIG="+kubeconfig)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The chart lints strictly, and what it renders for each shape of release
// the API server takes as it is (a server-side dry run validates every
// object against the real schemas, the CRDs' included).
func TestChartRenders(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	kubectl(t, k, "", "apply", "-f", filepath.Join(chart, "crds"))
	kubectl(t, k, "", "create", "namespace", "vwire")
	for name, values := range valueSets {
		t.Run(name, func(t *testing.T) {
			if out, err := helm(t, "", append([]string{"lint", "--strict", chart}, values...)...); err != nil {
				t.Fatalf("helm lint --strict: %v\n%s", err, out)
			}
			manifest, err := helm(t, "", append([]string{"template", "r", chart, "--namespace", "vwire"}, values...)...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, manifest)
			}
			kubectl(t, k, manifest, "apply", "--dry-run=server", "-n", "vwire", "-f", "-")
			// The gateway has the capabilities it needs, never privileged.
			if strings.Contains(manifest, "privileged: true") {
				t.Error("the chart runs something privileged")
			}
			if !strings.Contains(manifest, "add: [NET_ADMIN, SYS_ADMIN, NET_RAW]") {
				t.Error("the gateway lacks its explicit capabilities")
			}
			// Traces go to the collector from the proxies, the gateways
			// and the sidecars the webhook adds.
			if strings.Contains(name, "traces") && (strings.Count(manifest, "otel-collector.monitoring:4317") != 3 || !strings.Contains(manifest, "--sidecar-otlp-endpoint=otel-collector.monitoring:4317")) {
				t.Error("the OTLP endpoint does not reach the proxies, the gateways and the sidecars")
			}
			// With SPIRE the webhook's certificate has a CA of its own.
			if strings.Contains(manifest, "--spiffe-socket=") && strings.Contains(manifest, "--webhook-listen=") && !strings.Contains(manifest, "--webhook-ca-secret=r-vwire-webhook-ca") {
				t.Error("a SPIRE domain's webhook has no CA for its certificate")
			}
		})
	}
	// What helm install prints: the records to publish, from the address
	// peers reach the proxies at.
	notes, err := helm(t, k.Kubeconfig, "install", "r", chart, "--namespace", "vwire", "--dry-run=client", "--set", "domain.name=public-k8s.marsha.example",
		"--set", "proxy.service.type=NodePort", "--set", "proxy.service.nodePorts.grpc=30701", "--set", "proxy.service.nodePorts.bundle=30702", "--set", "proxy.advertise=172.18.0.2:30701")
	if err != nil {
		t.Fatalf("helm install --dry-run: %v\n%s", err, notes)
	}
	notes = notes[strings.Index(notes, "\nNOTES:"):]
	for _, want := range []string{
		"proxy.public-k8s.marsha.example. +30 IN A +172.18.0.2\n",
		"_vwire._tcp.public-k8s.marsha.example. +30 IN SRV 10 100 30701 proxy.public-k8s.marsha.example.\n",
		"_spiffe-bundle._tcp.public-k8s.marsha.example. +30 IN SRV 10 100 30702 proxy.public-k8s.marsha.example.\n",
	} {
		if !regexp.MustCompile(want).MatchString(notes) {
			t.Errorf("the install notes lack the record %q:\n%s", want, notes)
		}
	}
}

// Values that cannot work are refused with what is wrong.
func TestChartRefusesBadValues(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "domain.name is required"},
		{[]string{"--set", "domain.name=Public_K8s"}, `domain.name "Public_K8s" is not a DNS name in lower case`},
		{[]string{"--set", "domain.name=a.example", "--set", "etcd.replicas=2"}, "at '/etcd/replicas': value must be one of 1, 3"},
		{[]string{"--set", "domain.name=a.example", "--set", "identity.mode=vault"}, "at '/identity/mode': value must be one of 'builtin', 'spire'"},
		{[]string{"--set", "domain.name=a.example", "--set", "federation.peers[0].domain=b.example", "--set", "federation.peers[0].bundleEndpoint=http://b.example:7002",
			"--set-string", "federation.peers[0].bundle=" + peerBundle}, "at '/federation/peers/0/bundleEndpoint': 'http://b.example:7002' does not match pattern '^https://'"},
		{[]string{"--set", "domain.name=a.example", "--set", "federation.peers[0].domain=b.example", "--set", "federation.peers[0].bundleEndpoint=https://b.example:7002"},
			"at '/federation/peers/0': missing property 'bundle'"},
		{[]string{"--set", "domain.name=a.example", "--set", "webhook.failurePolicy=Maybe"}, "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"},
		{[]string{"--set", "domain.name=a.example", "--set", "observability.otlpEndpoint=collector"}, "at '/observability/otlpEndpoint': 'collector' does not match pattern"},
	} {
		out, err := helm(t, "", append([]string{"template", "r", chart}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("helm template %v: %v\n%s\nwant %q", c.args, err, out, c.want)
		}
	}
}

// helm install makes the release's objects; helm upgrade with a changed
// value rolls the proxies and gateways (their pod templates change) and
// keeps what the release made at install: etcd's certificates.
func TestChartUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a Kubernetes API server")
	}
	k := e2e.StartKubeAPI(t)
	install := []string{"--namespace", "vwire", "--create-namespace", "--set", "domain.name=public-k8s.marsha.example"}
	if out, err := helm(t, k.Kubeconfig, append([]string{"install", "dom", chart}, install...)...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	get := func(what, path string) string {
		return kubectl(t, k, "", "get", "-n", "vwire", what, "-o", "jsonpath="+path)
	}
	if got := get("crd/networkservices.networkservicemesh.io", "{.spec.names.shortNames}"); got != `["netsvc","netsvcs"]` {
		t.Errorf("helm install did not install the CRDs: %q", got)
	}
	proxyRoll := get("deploy/dom-vwire-proxy", "{.spec.template.metadata.annotations.checksum/values}")
	gatewayRoll := get("ds/dom-vwire-gateway", "{.spec.template.metadata.annotations.checksum/values}")
	certs := get("secret/dom-vwire-etcd-tls", "{.data}")
	if proxyRoll == "" || gatewayRoll == "" || !strings.Contains(certs, "client.crt") {
		t.Fatalf("installed: proxy %q, gateway %q, etcd certificates %q", proxyRoll, gatewayRoll, certs)
	}
	if out, err := helm(t, k.Kubeconfig, append([]string{"upgrade", "dom", chart, "--set", "proxy.logLevel=debug"}, install...)...); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	if get("deploy/dom-vwire-proxy", "{.spec.template.metadata.annotations.checksum/values}") == proxyRoll {
		t.Error("a changed value does not roll the proxies")
	}
	if get("ds/dom-vwire-gateway", "{.spec.template.metadata.annotations.checksum/values}") == gatewayRoll {
		t.Error("a changed value does not roll the gateways")
	}
	if get("secret/dom-vwire-etcd-tls", "{.data}") != certs {
		t.Error("helm upgrade made new etcd certificates: the members and proxies of the old release no longer trust each other")
	}
	if out, err := helm(t, k.Kubeconfig, "uninstall", "dom", "--namespace", "vwire"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
}

func kubectl(t *testing.T, k *e2e.KubeAPI, stdin string, args ...string) string {
	t.Helper()
	return k.Run(t, stdin, args...)
}
