package compose

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/proxy/proxypb"
)

// root is the repository, for deploy/.
var root = func() string { d, _ := filepath.Abs("../.."); return d }()

// requireDocker fails the test under CI=true, and skips it elsewhere, when
// Docker or compose is missing; it returns the compose command.
func requireDocker(t testing.TB) []string {
	t.Helper()
	e2e.RequireRoot(t)
	var missing string
	switch {
	case exec.Command("docker", "info").Run() != nil:
		missing = "a running Docker engine (docker info failed)"
	case exec.Command("docker", "compose", "version").Run() == nil:
		return []string{"docker", "compose"}
	default:
		if _, err := exec.LookPath("docker-compose"); err == nil {
			return []string{"docker-compose"}
		}
		missing = "docker compose or docker-compose"
	}
	msg := "needs " + missing + " (the compose deployments run on it)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return nil
}

// stack is three domains on Docker, as deploy/compose runs them: a.example
// and b.example each one container (domain.yaml), c.example for
// production (production.yaml: 3 etcd, 2 proxies, a gateway), a CoreDNS
// serving their zones, all on one "internet" network; an endpoint of svc
// in c and a client of svc@c.example in a, each an app with a sidecar.
type stack struct {
	t       testing.TB
	compose []string
	tag     string
	dir     string
	images  map[string]string // vwire, etcd, coredns, workload
	net     string            // the internet network
	prefix  string            // its first three octets: "10.X.Y"
	dns     string            // the DNS container
	domains map[string]*domain
	client  *workload // in a: svc@c.example
	server  *workload // in c: svc
}

type domain struct {
	name, project, file string
	env                 []string
	sockets             string            // the gateway socket's volume
	ips                 map[string]string // service → address on the internet network
}

type workload struct {
	project, file string
	env           []string
}

// ip is the internet network's address n.
func (s *stack) ip(n int) string { return fmt.Sprintf("%s.%d", s.prefix, n) }

// run runs a command and returns its output; it fails the test if the
// command fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// newStack builds the images, the network, the DNS server, the three
// domains, federates them with the real commands, and starts the
// workloads. Everything it made is removed when the test ends.
func newStack(t testing.TB) *stack {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	s := &stack{t: t, compose: requireDocker(t), tag: hex.EncodeToString(b), dir: t.TempDir(), domains: map[string]*domain{}}

	s.images = map[string]string{}
	for _, kind := range []string{"vwire", "etcd", "coredns", "workload"} {
		tag := "vwire-e2e-" + kind + ":" + s.tag
		env := map[string]string{"vwire": "VWIRE_IMAGE", "etcd": "VWIRE_ETCD_IMAGE", "coredns": "VWIRE_COREDNS_IMAGE", "workload": "VWIRE_WORKLOAD_IMAGE"}[kind]
		cmd := exec.Command(filepath.Join(root, "deploy/image/build.sh"), kind)
		cmd.Env = append(os.Environ(), env+"="+tag)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building image %s: %v\n%s", kind, err, out)
		}
		s.images[kind] = tag
		t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	}
	s.network()
	s.startDNS()
	s.addDomain("a.example", "domain.yaml", map[string]int{"domain": 10})
	s.addDomain("b.example", "domain.yaml", map[string]int{"domain": 20})
	s.addDomain("c.example", "production.yaml", map[string]int{"proxy1": 30, "proxy2": 31, "gateway": 32})
	for _, d := range s.domains {
		for svc := range d.ips {
			s.waitLog(s.id(d.project, d.file, d.env, svc), " ready in ", 90*time.Second)
		}
	}
	s.federate()
	s.cli("c.example", "apply", "-f", "/dev/stdin").stdin("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: svc}\nspec: {payload: IP}\n").do()
	s.server = s.addWorkload("c.example", "endpoint.yaml", "VWIRE_SERVICE=svc", "VWIRE_CIDR=172.16.50.0/24", "VWIRE_LABELS=app=server")
	s.waitLog(s.server.id(s, "sidecar"), " ready in ", 60*time.Second)
	s.client = s.addWorkload("a.example", "client.yaml", "VWIRE_CONNECT=svc@c.example", "VWIRE_LABELS=app=client")
	s.waitLog(s.client.id(s, "sidecar"), "\nup in ", 60*time.Second)
	return s
}

// network makes the internet network on a free 10.X.Y.0/24.
func (s *stack) network() {
	s.net = "vwe-" + s.tag + "-internet"
	for i := 0; i < 50; i++ {
		n := make([]byte, 2)
		rand.Read(n)
		prefix := fmt.Sprintf("10.%d.%d", 200+int(n[0])%50, n[1])
		out, err := exec.Command("docker", "network", "create", "--subnet", prefix+".0/24", s.net).CombinedOutput()
		if err == nil {
			s.prefix = prefix
			s.t.Cleanup(func() { exec.Command("docker", "network", "rm", s.net).Run() })
			return
		}
		if !strings.Contains(string(out), "overlap") {
			s.t.Fatalf("docker network create: %v\n%s", err, out)
		}
	}
	s.t.Fatal("no free 10.x.y.0/24 for the internet network")
}

// startDNS runs CoreDNS on the internet network, serving the three zones.
func (s *stack) startDNS() {
	var corefile strings.Builder
	records := map[string]string{
		"a.example": "proxy 30 IN A " + s.ip(10) + "\n_vwire._tcp 30 IN SRV 10 100 7001 proxy.a.example.\n_spiffe-bundle._tcp 30 IN SRV 10 100 7002 proxy.a.example.\n",
		"b.example": "proxy 30 IN A " + s.ip(20) + "\n_vwire._tcp 30 IN SRV 10 100 7001 proxy.b.example.\n_spiffe-bundle._tcp 30 IN SRV 10 100 7002 proxy.b.example.\n",
		"c.example": "proxy1 30 IN A " + s.ip(30) + "\nproxy2 30 IN A " + s.ip(31) + "\n" +
			"_vwire._tcp 30 IN SRV 10 100 7001 proxy1.c.example.\n_vwire._tcp 30 IN SRV 10 100 7001 proxy2.c.example.\n" +
			"_spiffe-bundle._tcp 30 IN SRV 10 100 7002 proxy1.c.example.\n_spiffe-bundle._tcp 30 IN SRV 10 100 7002 proxy2.c.example.\n",
	}
	for d, rrs := range records {
		zone := fmt.Sprintf("$ORIGIN %[1]s.\n@ 3600 IN SOA ns.%[1]s. admin.%[1]s. 1 7200 3600 1209600 30\n@ 3600 IN NS ns.%[1]s.\nns 30 IN A %[2]s\n%[3]s", d, s.ip(2), rrs)
		os.WriteFile(filepath.Join(s.dir, d+".zone"), []byte(zone), 0o644)
		fmt.Fprintf(&corefile, "%s:53 {\n    file /zones/%s.zone\n}\n", d, d)
	}
	os.WriteFile(filepath.Join(s.dir, "Corefile"), []byte(corefile.String()), 0o644)
	s.dns = "vwe-" + s.tag + "-dns"
	s.t.Cleanup(func() { exec.Command("docker", "rm", "-f", s.dns).Run() })
	run(s.t, "docker", "run", "-d", "--name", s.dns, "--network", s.net, "--ip", s.ip(2), "-v", s.dir+":/zones:ro", s.images["coredns"], "-conf", "/zones/Corefile")
}

// addDomain runs domain name from deploy/compose/file; ips are its public
// services' last octets.
func (s *stack) addDomain(name, file string, ips map[string]int) {
	d := &domain{name: name, project: "vwe" + s.tag + name[:1], file: filepath.Join(root, "deploy/compose", file),
		sockets: "vwe-" + s.tag + "-sockets-" + name[:1], ips: map[string]string{}}
	d.env = []string{"VWIRE_DOMAIN=" + name, "VWIRE_NETWORK=" + s.net, "VWIRE_DNS_SERVER=" + s.ip(2) + ":53", "VWIRE_SOCKETS=" + d.sockets,
		"VWIRE_IMAGE=" + s.images["vwire"], "VWIRE_ETCD_IMAGE=" + s.images["etcd"], "VWIRE_PUBLISH_IP=127.0.0.1",
		"VWIRE_PROXY_PORT=" + strconv.Itoa(e2e.FreePort(s.t)), "VWIRE_BUNDLE_PORT=" + strconv.Itoa(e2e.FreePort(s.t)),
		"VWIRE_DEBUG_LISTEN=0.0.0.0:6060"}
	for svc, n := range ips {
		d.ips[svc] = s.ip(n)
		env := map[string]string{"domain": "VWIRE_PUBLIC_IP", "proxy1": "VWIRE_PROXY1_IP", "proxy2": "VWIRE_PROXY2_IP", "gateway": "VWIRE_GATEWAY_IP"}[svc]
		d.env = append(d.env, env+"="+s.ip(n))
	}
	s.domains[name] = d
	s.t.Cleanup(func() { s.down(d.project, d.file, d.env) })
	if out, err := s.composeCmd(d.project, d.file, d.env, "up", "-d").CombinedOutput(); err != nil {
		s.t.Fatalf("compose up %s: %v\n%s", name, err, out)
	}
}

// addWorkload runs an example workload of deploy/compose in domain d.
func (s *stack) addWorkload(d, file string, env ...string) *workload {
	w := &workload{project: "vwe" + s.tag + d[:1] + strings.TrimSuffix(file, ".yaml")[:1], file: filepath.Join(root, "deploy/compose", file),
		env: append(env, "VWIRE_SOCKETS="+s.domains[d].sockets, "VWIRE_IMAGE="+s.images["vwire"], "VWIRE_WORKLOAD_IMAGE="+s.images["workload"])}
	s.t.Cleanup(func() { s.down(w.project, w.file, w.env) }) // before the domain's: it uses its volume
	if out, err := s.composeCmd(w.project, w.file, w.env, "up", "-d").CombinedOutput(); err != nil {
		s.t.Fatalf("compose up %s: %v\n%s", file, err, out)
	}
	return w
}

func (w *workload) id(s *stack, service string) string {
	return s.id(w.project, w.file, w.env, service)
}

func (s *stack) composeCmd(project, file string, env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(s.compose[0], append(append(s.compose[1:], "-p", project, "-f", file), args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// down removes a project's containers, networks and volumes, after
// logging its containers' output when the test failed.
func (s *stack) down(project, file string, env []string) {
	if s.t.Failed() {
		out, _ := s.composeCmd(project, file, env, "logs", "--no-color", "--tail", "60").CombinedOutput()
		s.t.Logf("%s logs:\n%s", project, out)
	}
	if out, err := s.composeCmd(project, file, env, "down", "-v", "--remove-orphans", "-t", "5").CombinedOutput(); err != nil {
		s.t.Logf("compose down %s: %v\n%s", project, err, out)
	}
}

// id is the container of a project's service.
func (s *stack) id(project, file string, env []string, service string) string {
	out, err := s.composeCmd(project, file, env, "ps", "-q", service).Output()
	id := strings.TrimSpace(string(out))
	if err != nil || id == "" {
		s.t.Fatalf("no container of %s in %s: %v", service, project, err)
	}
	return id
}

// svc is the container of domain d's service.
func (s *stack) svc(d, service string) string {
	dom := s.domains[d]
	return s.id(dom.project, dom.file, dom.env, service)
}

// waitLog waits until container id has printed a line containing want.
func (s *stack) waitLog(id, want string, within time.Duration) {
	s.t.Helper()
	for deadline := time.Now().Add(within); ; time.Sleep(200 * time.Millisecond) {
		out, _ := exec.Command("docker", "logs", id).CombinedOutput()
		if strings.Contains(string(out), want) {
			return
		}
		if time.Now().After(deadline) {
			if os.Getenv("HOLD") != "" {
				s.t.Log("HOLD")
				time.Sleep(10 * time.Minute)
			}
			s.t.Fatalf("container %.12s did not print %q within %v:\n%s", id, want, within, out)
		}
	}
}

// call is a vwire command in a container.
type call struct {
	s    *stack
	args []string
	in   string
}

// cli runs a vwire client command as domain d's admin, in the container
// that serves it.
func (s *stack) cli(d string, args ...string) *call {
	service := "domain"
	if d == "c.example" {
		service = "proxy1"
	}
	id := s.svc(d, service)
	return &call{s: s, args: append(append([]string{"exec", "-i", id, "/vwire"}, args...), "--registry", "127.0.0.1:7001", "--credentials", "/var/lib/vwire/admin")}
}

func (c *call) stdin(in string) *call { c.in = in; return c }

func (c *call) do() string {
	c.s.t.Helper()
	cmd := exec.Command("docker", c.args...)
	cmd.Stdin = strings.NewReader(c.in)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.s.t.Fatalf("docker %s: %v\n%s", strings.Join(c.args, " "), err, out)
	}
	return string(out)
}

// federate makes every domain federate with every other through the real
// commands: the bundle from the peer's admin, the bundle endpoint from its
// _spiffe-bundle._tcp SRV record.
func (s *stack) federate() {
	for d := range s.domains {
		bundle := s.cli(d, "federation", "bundle").do()
		for other := range s.domains {
			if other != d {
				s.cli(other, "federation", "add", d, "--bundle", "/dev/stdin").stdin(bundle).do()
			}
		}
	}
}

// volume is where a volume's data is on this host.
func (s *stack) volume(name string) string {
	return run(s.t, "docker", "volume", "inspect", "-f", "{{.Mountpoint}}", name)
}

// admin connects to domain d's proxy (service svc) as its admin.
func (s *stack) admin(d, svc string) *grpc.ClientConn {
	s.t.Helper()
	dom := s.domains[d]
	creds, err := federation.LoadCredentials(filepath.Join(s.volume(dom.project+"_data"), "admin"))
	if err != nil {
		s.t.Fatal(err)
	}
	conn, err := federation.DialDomain(dom.ips[svc]+":7001", creds)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

// gatewayOf connects to domain d's gateway socket as a workload in
// container app does: handing over app's network namespace.
func (s *stack) gatewayOf(d, app string) proxypb.NetworkServiceClient {
	s.t.Helper()
	pid := run(s.t, "docker", "inspect", "-f", "{{.State.Pid}}", app)
	ns, err := os.Open("/proc/" + pid + "/ns/net")
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { ns.Close() })
	sock := filepath.Join(s.volume(s.domains[d].sockets), "gateway.sock")
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(handover.HandNS(ns)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return proxypb.NewNetworkServiceClient(conn)
}

// vwire sets up a vWire to svc@c.example from the client app, as interface
// iface, and closes it; it returns how long the set-up took.
func vwire(ctx context.Context, gw proxypb.NetworkServiceClient, service, iface string) (time.Duration, error) {
	start := time.Now()
	conn, err := gw.Request(ctx, &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{NetworkService: service,
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Kernel{Kernel: &proxypb.KernelInterface{InterfaceName: iface}}}}})
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	_, err = gw.Close(ctx, &proxypb.Connection{Id: conn.GetId()})
	return took, err
}

// pinger pings from a container, every interval, and reads the replies'
// times.
type pinger struct {
	s        *stack
	id, to   string
	file     string
	interval time.Duration
}

// ping starts pinging to from container id until stop.
func (s *stack) ping(id, to string, interval time.Duration) *pinger {
	p := &pinger{s: s, id: id, to: to, file: fmt.Sprintf("/tmp/ping-%d.log", time.Now().UnixNano()), interval: interval}
	run(s.t, "docker", "exec", "-d", id, "sh", "-c", fmt.Sprintf("exec ping -D -n -i %.3f -W 1 %s > %s 2>&1", interval.Seconds(), to, p.file))
	return p
}

var reply = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)`)

// replies are the times of the replies so far, by sequence number.
func (p *pinger) replies() (map[int]time.Time, int) {
	out, _ := exec.Command("docker", "exec", p.id, "cat", p.file).Output()
	got, last := map[int]time.Time{}, 0
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m := reply.FindStringSubmatch(sc.Text()); m != nil {
			f, _ := strconv.ParseFloat(m[1], 64)
			seq, _ := strconv.Atoi(m[2])
			got[seq] = time.Unix(0, int64(f*1e9))
			last = max(last, seq)
		}
	}
	return got, last
}

// stop ends the pinging.
func (p *pinger) stop() {
	exec.Command("docker", "exec", p.id, "sh", "-c", "kill $(pidof ping)").Run()
}

// firstReplyAfter waits (up to within) for a reply sent after t, and
// returns its time.
func (p *pinger) firstReplyAfter(t time.Time, within time.Duration) (time.Time, bool) {
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got, _ := p.replies()
		first := time.Time{}
		for _, at := range got {
			if at.After(t) && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
		if !first.IsZero() {
			return first, true
		}
	}
	return time.Time{}, false
}

// lost is how many of the probes sent so far went unanswered, and the
// longest run of them.
func (p *pinger) lost() (lost int, longest time.Duration) {
	before, after, longest := p.lostAround(time.Time{})
	return before + after, longest
}

// lostAround splits the unanswered probes into those sent before t and
// those sent after it (sending times reckoned from the first reply and
// the interval); longest is the longest run after t.
func (p *pinger) lostAround(t time.Time) (before, after int, longest time.Duration) {
	got, last := p.replies()
	first, firstAt := 0, time.Time{}
	for seq, at := range got {
		if first == 0 || seq < first {
			first, firstAt = seq, at
		}
	}
	run := 0
	for seq := 1; seq <= last; seq++ {
		if _, ok := got[seq]; ok {
			run = 0
			continue
		}
		sent := firstAt.Add(time.Duration(seq-first) * p.interval)
		if sent.Before(t) {
			before++
			continue
		}
		after++
		run++
		longest = max(longest, time.Duration(run)*p.interval)
	}
	return before, after, longest
}

// goroutines is domain d's goroutine count, from its --debug-listen.
func (s *stack) goroutines(d string) int {
	resp, err := http.Get("http://" + s.domains[d].ips["domain"] + ":6060/debug/pprof/goroutine?debug=1")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 1<<16)).ReadString('\n')
	n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total")))
	return n
}

// connections counts container id's established TCP connections to the
// addresses given (host:port).
func (s *stack) connections(id string, to ...string) int {
	pid := run(s.t, "docker", "inspect", "-f", "{{.State.Pid}}", id)
	b, _ := os.ReadFile("/proc/" + pid + "/net/tcp")
	n := 0
	for _, l := range strings.Split(string(b), "\n")[1:] {
		fs := strings.Fields(l)
		if len(fs) < 4 || fs[3] != "01" { // ESTABLISHED
			continue
		}
		// 0100007F:1B59 is 127.0.0.1:7001: the address little-endian.
		addr, port, _ := strings.Cut(fs[2], ":")
		a, _ := strconv.ParseUint(addr, 16, 32)
		p, _ := strconv.ParseUint(port, 16, 16)
		remote := fmt.Sprintf("%d.%d.%d.%d:%d", a&0xff, a>>8&0xff, a>>16&0xff, a>>24, p)
		for _, t := range to {
			if remote == t {
				n++
			}
		}
	}
	return n
}

// links lists the links a gateway made in container id's network
// namespace (its veths and WireGuard devices: Docker's own interfaces
// change names when a network is connected again).
func (s *stack) links(id string) []string {
	pid := run(s.t, "docker", "inspect", "-f", "{{.State.Pid}}", id)
	var names []string
	for _, l := range strings.Split(run(s.t, "nsenter", "-t", pid, "-n", "ip", "-o", "link", "show"), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			if name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]; strings.HasPrefix(name, "vw") || strings.HasPrefix(name, "wg") {
				names = append(names, name)
			}
		}
	}
	sort.Strings(names)
	return names
}

// count is how many times container id printed want.
func (s *stack) count(id, want string) int {
	out, _ := exec.Command("docker", "logs", id).CombinedOutput()
	return strings.Count(string(out), want)
}

// waitCount waits until container id printed want n times.
func (s *stack) waitCount(id, want string, n int, within time.Duration) {
	s.t.Helper()
	for deadline := time.Now().Add(within); s.count(id, want) < n; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			s.t.Fatalf("container %.12s did not print %q %d times within %v", id, want, n, within)
		}
	}
}

// loop runs op every interval until stop is called (at most n times), and
// records when each failed and why.
type loop struct {
	mu       sync.Mutex
	ok       int
	failures []failure
	stop     func()
	done     chan struct{}
}

type failure struct {
	at  time.Time
	err error
}

func (f failure) String() string { return f.at.Format("15:04:05.000") + " " + f.err.Error() }

func every(interval time.Duration, n int, op func(i int) error) *loop {
	l := &loop{done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	l.stop = func() { cancel(); <-l.done }
	go func() {
		defer close(l.done)
		for i := 0; i < n && ctx.Err() == nil; i++ {
			err := op(i)
			l.mu.Lock()
			if err != nil {
				l.failures = append(l.failures, failure{time.Now(), err})
			} else {
				l.ok++
			}
			l.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
		}
	}()
	return l
}

// since are the failures after t.
func (l *loop) since(t time.Time) []failure {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []failure
	for _, f := range l.failures {
		if f.at.After(t) {
			out = append(out, f)
		}
	}
	return out
}
