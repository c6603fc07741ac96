package kind

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// root is the repository, for deploy/.
var root = func() string { d, _ := filepath.Abs("../.."); return d }()

// world is Marsha's four domains: public-k8s and private-k8s each a kind
// cluster with vwire's chart, vim and dc each a compose domain
// (deploy/compose/domain.yaml), a CoreDNS serving their records, all on
// one Docker network.
type world struct {
	t          testing.TB
	tag        string
	dir        string
	env        []string // kind's and docker's: the wrapper, the network
	net        string
	prefix     string // the network's first three octets
	dns        string
	images     map[string]string
	node       string // the kind node image
	composeCmd []string
	domains    map[string]*domain
}

type domain struct {
	short, name string
	// A cluster: its kind name, kubeconfig, node container and address.
	cluster, kubeconfig, nodeName, nodeIP string
	// A compose domain: its project and environment.
	project string
	cenv    []string
	ip      string
}

func (d *domain) kube() bool { return d.cluster != "" }

func (w *world) ip(n int) string { return fmt.Sprintf("%s.%d", w.prefix, n) }

// cmd runs name with args in the world's environment and returns its
// output, failing the test if it fails.
func (w *world) cmd(stdin, name string, args ...string) string {
	w.t.Helper()
	out, err := w.try(stdin, name, args...)
	if err != nil {
		w.hold()
		w.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (w *world) try(stdin, name string, args ...string) (string, error) {
	c := exec.Command(name, args...)
	c.Env = append(os.Environ(), w.env...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (w *world) kubectl(d *domain, stdin string, args ...string) string {
	w.t.Helper()
	return w.cmd(stdin, e2e.ToolPath(w.t, "kubectl"), append([]string{"--kubeconfig", d.kubeconfig}, args...)...)
}

// in is the world as seen from subtest t.
func (w *world) in(t *testing.T) *world {
	c := *w
	c.t = t
	return &c
}

// hold keeps everything as it is for 20 minutes when HOLD is set: a
// failure to look at.
func (w *world) hold() {
	if os.Getenv("HOLD") != "" {
		w.t.Logf("HOLD: kubeconfigs in %s", w.dir)
		time.Sleep(20 * time.Minute)
	}
}

// waitFor polls cond every half second until it holds or within passes.
func (w *world) waitFor(what string, within time.Duration, cond func() bool) time.Duration {
	w.t.Helper()
	return w.poll(what, within, 500*time.Millisecond, cond)
}

// poll polls cond every interval until it holds or within passes.
func (w *world) poll(what string, within, interval time.Duration, cond func() bool) time.Duration {
	w.t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			w.hold()
			w.t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(interval)
	}
	return time.Since(start)
}

// Marsha's clusters end to end: pods annotated in either cluster ping the
// endpoint in her data centre, a pod in public-k8s reaches an endpoint pod
// in private-k8s, and deleting the pods leaves the gateways as they were.
func TestMarshasClusters(t *testing.T) {
	if os.Getenv("VWIRE_E2E_KIND") == "" {
		t.Skip("make e2e-kind runs it (VWIRE_E2E_KIND=1): two kind clusters and two compose domains")
	}
	w := newWorld(t)
	pub, priv, dc := w.domains["public-k8s"], w.domains["private-k8s"], w.domains["dc"]

	// The data centre's service and its endpoint, a container of dc.
	w.cli(dc, manifest("marshas-app-connectivity"), "apply", "-f", "/dev/stdin")
	w.compose("dc-endpoint", "endpoint.yaml", append(dc.cenv, "VWIRE_SERVICE=marshas-app-connectivity", "VWIRE_CIDR=172.16.40.0/24", "VWIRE_LABELS=app=server",
		"VWIRE_WORKLOAD_IMAGE="+w.images["workload"]))
	// private-k8s's own service, with an endpoint pod.
	w.kubectl(priv, manifest("pk-echo"), "apply", "-f", "-")
	w.pod(priv, "pk-echo", `vwire.io/endpoint: "pk-echo?cidr=172.16.41.0/24"`)

	baseline := map[*domain]string{pub: w.ends(pub), priv: w.ends(priv)}
	for _, c := range []struct {
		d            *domain
		name, target string
	}{
		{pub, "to-dc", "marshas-app-connectivity@dc.marsha.example"},
		{priv, "to-dc", "marshas-app-connectivity@dc.marsha.example"},
		{pub, "to-private", "pk-echo@private-k8s.marsha.example"},
	} {
		t.Run(c.d.short+"/"+c.name, func(t *testing.T) {
			w := w.in(t)
			start := time.Now()
			w.pod(c.d, c.name, `vwire.io/connect: "`+c.target+`"`)
			up := w.kubectl(c.d, "", "exec", c.name, "-c", "vwire-nsm0", "--", "/vwire", "ready", "/run/vwire-ready/nsm0")
			m := regexp.MustCompile(`-> ([0-9.]+)/`).FindStringSubmatch(up)
			if m == nil {
				t.Fatalf("no peer address in the sidecar's state: %s", up)
			}
			w.waitFor("a reply from "+m[1]+" through nsm0", 30*time.Second, func() bool {
				_, err := w.try("", e2e.ToolPath(t, "kubectl"), "--kubeconfig", c.d.kubeconfig, "exec", c.name, "-c", "app", "--", "ping", "-c", "1", "-W", "1", "-I", "nsm0", m[1])
				return err == nil
			})
			t.Logf("%s in %s: created to first reply over its vWire to %s in %v", c.name, c.d.short, c.target, time.Since(start).Round(time.Millisecond))
			// kubectl describe pod tells what happened.
			w.waitFor("the VWireUp event on the pod", 20*time.Second, func() bool {
				return strings.Contains(w.kubectl(c.d, "", "get", "events", "--field-selector", "involvedObject.name="+c.name+",reason=VWireUp", "-o", "jsonpath={.items[*].message}"),
					"vWire to "+c.target+" up")
			})
			// The pod's own interface is the CNI's still.
			if addrs := w.kubectl(c.d, "", "exec", c.name, "-c", "app", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(addrs, "10.244.") {
				t.Errorf("the pod's eth0: %s", addrs)
			}
		})
	}
	// A pod asking for what does not exist never starts its app, and says
	// why.
	t.Run("public-k8s/to-nowhere", func(t *testing.T) {
		w := w.in(t)
		w.kubectl(pub, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata:\n  name: to-nowhere\n  annotations: {vwire.io/connect: \"no-such-service@dc.marsha.example\"}\nspec:\n  containers: [{name: app, image: \"%s\", imagePullPolicy: Never, command: [sleep, infinity]}]\n", w.images["workload"]), "apply", "-f", "-")
		w.waitFor("the VWireFailed event on the pod", 60*time.Second, func() bool {
			msg := w.kubectl(pub, "", "get", "events", "--field-selector", "involvedObject.name=to-nowhere,reason=VWireFailed", "-o", "jsonpath={.items[*].message}")
			return strings.Contains(msg, "no vWire to no-such-service@dc.marsha.example") && strings.Contains(msg, "no-such-service")
		})
		if phase := w.kubectl(pub, "", "get", "pod", "to-nowhere", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"); phase != "PodInitializing" {
			t.Errorf("the app of a pod without its vWire: %q, want PodInitializing (not started)", phase)
		}
	})
	if t.Failed() {
		return
	}

	// Deleting the pods takes their vWires' ends away.
	for _, d := range []*domain{pub, priv} {
		w.kubectl(d, "", "delete", "pod", "--all", "--wait=true", "--timeout=120s")
	}
	for d, before := range baseline {
		w.waitFor(d.short+"'s gateway back to its interfaces before the pods", 90*time.Second, func() bool { return w.ends(d) == before })
		if pins := w.cmd("", "docker", "exec", d.nodeName, "ls", "/var/lib/vwire-gateway/gateway/netns"); pins != "" {
			t.Errorf("%s's gateway still pins namespaces: %s", d.short, pins)
		}
	}
}

// manifest is a NetworkService of IP.
func manifest(name string) string {
	return "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: " + name + "}\nspec: {payload: IP}\n"
}

// pod runs a Debian pod with annotations in d's default namespace, and
// waits until it is ready: its vWires up.
func (w *world) pod(d *domain, name, annotations string) {
	w.t.Helper()
	w.kubectl(d, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: %s}
  annotations: {%s}
spec:
  terminationGracePeriodSeconds: 5
  containers: [{name: app, image: "%s", imagePullPolicy: Never, command: [sleep, infinity]}]
`, name, name, annotations, w.images["workload"]), "apply", "-f", "-")
	if _, err := w.try("", e2e.ToolPath(w.t, "kubectl"), "--kubeconfig", d.kubeconfig, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=180s"); err != nil {
		desc, _ := w.try("", e2e.ToolPath(w.t, "kubectl"), "--kubeconfig", d.kubeconfig, "describe", "pod", name)
		logs, _ := w.try("", e2e.ToolPath(w.t, "kubectl"), "--kubeconfig", d.kubeconfig, "logs", name, "--all-containers", "--tail=30")
		w.hold()
		w.t.Fatalf("pod %s in %s not ready within 180 s:\n%s\n%s", name, d.short, desc, logs)
	}
}

// ends lists what a cluster node's gateway programmed: its links.
func (w *world) ends(d *domain) string {
	out := w.cmd("", "docker", "exec", d.nodeName, "ip", "-o", "link", "show")
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 1 && !strings.HasPrefix(f[1], "veth") && !strings.HasPrefix(f[1], "cni0") {
			names = append(names, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	return strings.Join(names, " ")
}

// cli runs a vwire admin command in domain d's proxy.
func (w *world) cli(d *domain, stdin string, args ...string) string {
	w.t.Helper()
	name, args := w.cliCommand(d, args)
	return w.cmd(stdin, name, args...)
}

// tryCli is cli, returning its error.
func (w *world) tryCli(d *domain, stdin string, args ...string) (string, error) {
	name, args := w.cliCommand(d, args)
	return w.try(stdin, name, args...)
}

// cliCommand runs a vwire client command in domain d's proxy.
func (w *world) cliCommand(d *domain, args []string) (string, []string) {
	args = append(args, "--registry", "127.0.0.1:7001", "--credentials", "/var/lib/vwire/admin")
	if d.kube() {
		return e2e.ToolPath(w.t, "kubectl"), append([]string{"--kubeconfig", d.kubeconfig, "exec", "-i", "-n", "vwire", "deploy/vwire-proxy", "--", "/vwire"}, args...)
	}
	return "docker", append([]string{"exec", "-i", w.container(d.project, "domain"), "/vwire"}, args...)
}

// container is the container of a compose project's service.
func (w *world) container(project, service string) string {
	w.t.Helper()
	id := w.cmd("", "docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+project, "--filter", "label=com.docker.compose.service="+service)
	if id == "" || strings.Contains(id, "\n") {
		w.t.Fatalf("no single container of %s in compose project %s: %q", service, project, id)
	}
	return id
}

// compose runs deploy/compose/file as project (removed at the end).
func (w *world) compose(project, file string, env []string) {
	w.t.Helper()
	project = "vwk" + w.tag + strings.ReplaceAll(project, "-", "")
	args := append(w.composeCmd[1:len(w.composeCmd):len(w.composeCmd)], "-p", project, "-f", filepath.Join(root, "deploy/compose", file))
	run := func(more ...string) (string, error) {
		c := exec.Command(w.composeCmd[0], append(args, more...)...)
		c.Env = append(os.Environ(), env...)
		out, err := c.CombinedOutput()
		return string(out), err
	}
	w.t.Cleanup(func() {
		if w.t.Failed() {
			out, _ := run("logs", "--no-color", "--tail", "60")
			w.t.Logf("%s logs:\n%s", project, out)
		}
		run("down", "-v", "--remove-orphans", "-t", "5")
	})
	if out, err := run("up", "-d"); err != nil {
		w.t.Fatalf("compose up %s: %v\n%s", file, err, out)
	}
}

// newWorld builds the images, the network, the clusters and the compose
// domains, publishes their records, installs the chart in each cluster
// and federates all four domains with the real commands. Everything it
// made goes when the test ends.
func newWorld(t testing.TB) *world {
	e2e.RequireRoot(t)
	b := make([]byte, 3)
	rand.Read(b)
	w := &world{t: t, tag: hex.EncodeToString(b), dir: t.TempDir(), images: map[string]string{}, domains: map[string]*domain{}}
	w.composeCmd = composeCommand(t)
	for _, tool := range []string{"kind", "kubectl", "helm"} {
		e2e.ToolPath(t, tool)
	}

	// Images: vwire's, built as deploy/image builds them, and the node.
	for _, kind := range []string{"vwire", "etcd", "coredns", "workload"} {
		tag := "vwire-e2e-" + kind + ":" + w.tag
		env := map[string]string{"vwire": "VWIRE_IMAGE", "etcd": "VWIRE_ETCD_IMAGE", "coredns": "VWIRE_COREDNS_IMAGE", "workload": "VWIRE_WORKLOAD_IMAGE"}[kind]
		c := exec.Command(filepath.Join(root, "deploy/image/build.sh"), kind)
		c.Env = append(os.Environ(), env+"="+tag)
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("building image %s: %v\n%s", kind, err, out)
		}
		w.images[kind] = tag
		t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	}
	start := time.Now()
	w.node = w.cmd("", filepath.Join(root, "deploy/kind/node/build.sh"))
	w.node = w.node[strings.LastIndex(w.node, "\n")+1:]
	t.Logf("kind node image %s ready in %v", w.node, time.Since(start).Round(time.Second))
	t.Cleanup(func() { exec.Command("docker", "rmi", w.node).Run() }) // saved beside the tools
	w.wrapDocker()

	// The network, the clusters on it, then the rest at fixed addresses
	// high in it (kind's nodes take the low ones).
	w.network()
	for _, short := range []string{"public-k8s", "private-k8s"} {
		w.cluster(short)
	}
	w.domains["vim"] = &domain{short: "vim", name: "vim.marsha.example", ip: w.ip(240)}
	w.domains["dc"] = &domain{short: "dc", name: "dc.marsha.example", ip: w.ip(241)}
	w.startDNS()
	for _, short := range []string{"vim", "dc"} {
		d := w.domains[short]
		d.project = "vwk" + w.tag + short
		d.cenv = []string{"VWIRE_DOMAIN=" + d.name, "VWIRE_NETWORK=" + w.net, "VWIRE_DNS_SERVER=" + w.ip(250) + ":53", "VWIRE_SOCKETS=vwk-" + w.tag + "-sockets-" + short,
			"VWIRE_IMAGE=" + w.images["vwire"], "VWIRE_PUBLIC_IP=" + d.ip, "VWIRE_PUBLISH_IP=127.0.0.1",
			"VWIRE_PROXY_PORT=" + strconv.Itoa(e2e.FreePort(t)), "VWIRE_BUNDLE_PORT=" + strconv.Itoa(e2e.FreePort(t)), "VWIRE_NODE=" + short}
		w.compose(short, "domain.yaml", d.cenv)
	}
	for _, short := range []string{"public-k8s", "private-k8s"} {
		w.install(w.domains[short])
	}
	for _, short := range []string{"vim", "dc"} {
		d := w.domains[short]
		w.waitFor(short+" ready", 90*time.Second, func() bool {
			logs, _ := w.try("", "docker", "logs", w.container(d.project, "domain"))
			return strings.Contains(logs, " ready in ")
		})
	}
	for _, short := range []string{"public-k8s", "private-k8s"} {
		d := w.domains[short]
		w.kubectl(d, "", "-n", "vwire", "rollout", "status", "deploy/vwire-proxy", "--timeout=180s")
		w.kubectl(d, "", "-n", "vwire", "rollout", "status", "ds/vwire-gateway", "--timeout=180s")
	}

	// Federation: each domain's bundle from its admin, added by every
	// other; the bundle endpoint comes from the peer's SRV record.
	for _, d := range w.domains {
		bundle := w.cli(d, "", "federation", "bundle")
		for _, other := range w.domains {
			if other == d {
				continue
			}
			// A new cluster's pods may not reach the DNS server outside it
			// for some seconds yet (its node's masquerading).
			w.waitFor("federation add "+d.name+" in "+other.name, 60*time.Second, func() bool {
				out, err := w.tryCli(other, bundle, "federation", "add", d.name, "--bundle", "/dev/stdin")
				if err != nil && !strings.Contains(out, "DNS failure") {
					w.t.Fatalf("federation add %s in %s: %v\n%s", d.name, other.name, err, out)
				}
				return err == nil
			})
		}
	}
	return w
}

// wrapDocker puts deploy/kind/bin/docker first in kind's PATH when this
// host cannot run privileged containers.
func (w *world) wrapDocker() {
	if exec.Command("docker", "run", "--rm", "--privileged", "--entrypoint", "/bin/true", w.node).Run() == nil {
		return
	}
	real, err := exec.LookPath("docker")
	if err != nil {
		w.t.Fatal(err)
	}
	w.env = append(w.env, "VWIRE_REAL_DOCKER="+real, "PATH="+filepath.Join(root, "deploy/kind/bin")+":"+os.Getenv("PATH"))
	w.t.Log("privileged containers fail here: kind runs through deploy/kind/bin/docker")
}

// network makes the Docker network on a free 10.X.Y.0/24; kind's clusters
// join it.
func (w *world) network() {
	w.net = "vwk-" + w.tag
	for range 50 {
		n := make([]byte, 2)
		rand.Read(n)
		prefix := fmt.Sprintf("10.%d.%d", 200+int(n[0])%50, n[1])
		out, err := exec.Command("docker", "network", "create", "--subnet", prefix+".0/24", w.net).CombinedOutput()
		if err == nil {
			w.prefix = prefix
			w.env = append(w.env, "KIND_EXPERIMENTAL_DOCKER_NETWORK="+w.net)
			w.t.Cleanup(func() { exec.Command("docker", "network", "rm", w.net).Run() })
			return
		}
		if !strings.Contains(string(out), "overlap") {
			w.t.Fatalf("docker network create: %v\n%s", err, out)
		}
	}
	w.t.Fatal("no free 10.x.y.0/24 for the network")
}

// cluster creates a one-node kind cluster for domain short.
func (w *world) cluster(short string) {
	d := &domain{short: short, name: short + ".marsha.example", cluster: "vwk" + w.tag + "-" + short}
	d.kubeconfig = filepath.Join(w.dir, short+".kubeconfig")
	d.nodeName = d.cluster + "-control-plane"
	cfg := filepath.Join(w.dir, short+".yaml")
	os.WriteFile(cfg, []byte("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking: {disableDefaultCNI: true}\n"), 0o644)
	kind := e2e.ToolPath(w.t, "kind")
	w.t.Cleanup(func() {
		if w.t.Failed() {
			out, _ := w.try("", "docker", "exec", d.nodeName, "journalctl", "-u", "kubelet", "--no-pager", "-n", "30")
			w.t.Logf("%s kubelet:\n%s", short, out)
		}
		w.try("", kind, "delete", "cluster", "--name", d.cluster, "--kubeconfig", d.kubeconfig)
	})
	start := time.Now()
	w.cmd("", kind, "create", "cluster", "--name", d.cluster, "--image", w.node, "--config", cfg, "--kubeconfig", d.kubeconfig)
	w.t.Logf("kind cluster %s created in %v", d.cluster, time.Since(start).Round(time.Second))
	d.nodeIP = w.cmd("", "docker", "inspect", "-f", "{{(index .NetworkSettings.Networks \""+w.net+"\").IPAddress}}", d.nodeName)
	w.cmd("", kind, "load", "docker-image", "--name", d.cluster, w.images["vwire"], w.images["etcd"], w.images["workload"])
	w.domains[short] = d
}

// startDNS runs CoreDNS serving marsha.example: each domain's proxies
// (_vwire._tcp) and bundle endpoint (_spiffe-bundle._tcp).
func (w *world) startDNS() {
	var zone strings.Builder
	fmt.Fprintf(&zone, "$ORIGIN marsha.example.\n@ 3600 IN SOA ns admin 1 7200 3600 1209600 30\n@ 3600 IN NS ns\nns 30 IN A %s\n", w.ip(250))
	for _, d := range w.domains {
		addr, grpc, bundle := d.ip, 7001, 7002
		if d.kube() {
			addr, grpc, bundle = d.nodeIP, 30701, 30702
		}
		fmt.Fprintf(&zone, "proxy.%[1]s 30 IN A %[2]s\n_vwire._tcp.%[1]s 30 IN SRV 10 100 %[3]d proxy.%[1]s\n_spiffe-bundle._tcp.%[1]s 30 IN SRV 10 100 %[4]d proxy.%[1]s\n",
			d.short, addr, grpc, bundle)
	}
	os.WriteFile(filepath.Join(w.dir, "marsha.zone"), []byte(zone.String()), 0o644)
	os.WriteFile(filepath.Join(w.dir, "Corefile"), []byte("marsha.example:53 {\n    file /zones/marsha.zone\n}\n"), 0o644)
	w.dns = "vwk-" + w.tag + "-dns"
	w.t.Cleanup(func() { exec.Command("docker", "rm", "-f", w.dns).Run() })
	w.cmd("", "docker", "run", "-d", "--name", w.dns, "--network", w.net, "--ip", w.ip(250), "-v", w.dir+":/zones:ro", w.images["coredns"], "-conf", "/zones/Corefile")
}

// install installs vwire's chart in cluster d: one proxy behind NodePorts
// on the node's address, etcd without a volume (kind here has no
// provisioner).
func (w *world) install(d *domain) {
	vwireRepo, vwireTag, _ := strings.Cut(w.images["vwire"], ":")
	etcdRepo, etcdTag, _ := strings.Cut(w.images["etcd"], ":")
	w.cmd("", e2e.ToolPath(w.t, "helm"), "install", "vwire", filepath.Join(root, "deploy/helm/vwire"), "--kubeconfig", d.kubeconfig,
		"--namespace", "vwire", "--create-namespace",
		"--set", "domain.name="+d.name,
		"--set", "image.repository="+vwireRepo, "--set-string", "image.tag="+vwireTag, "--set", "image.pullPolicy=Never",
		"--set", "etcd.image.repository="+etcdRepo, "--set-string", "etcd.image.tag="+etcdTag, "--set", "etcd.storage.size=",
		"--set", "proxy.replicas=1", "--set", "proxy.service.type=NodePort",
		"--set", "proxy.service.nodePorts.grpc=30701", "--set", "proxy.service.nodePorts.bundle=30702",
		"--set", "proxy.advertise="+d.nodeIP+":30701", "--set", "dns.server="+w.ip(250)+":53",
		"--set", "webhook.startupTimeout=90s")
}

// composeCommand is docker compose, or docker-compose where only that is.
func composeCommand(t testing.TB) []string {
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}
	}
	msg := "needs docker compose or docker-compose"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}
