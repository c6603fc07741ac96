package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/endpoint"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/internal/atomicfile"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// defaultGateway is the socket of `vwire domain` run with its defaults.
const defaultGateway = "unix://vwire-data/gateway.sock"

// dialGateway connects to the node's gateway socket, handing over ns (the
// caller's own network namespace, for the vWire's interface; nil when the
// requests name one). The socket is the node's trust boundary (owner
// only); the gateway learns who calls from the kernel.
func dialGateway(addr string, ns *os.File, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return nil, usagef("--gateway %q: want unix://PATH, the gateway's socket (DATA-DIR/gateway.sock of vwire domain, or its --gateway-socket)", addr)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--gateway %s: %w (is vwire domain running with --dataplane kernel?)", addr, err)
	}
	return grpc.NewClient(addr, federation.WithReconnect(append(opts, grpc.WithTransportCredentials(handover.HandNS(ns)))...)...)
}

// otlpFlag is --otlp-endpoint of a workload's command.
type otlpFlag string

func (o *otlpFlag) add(fs *pflag.FlagSet) {
	fs.StringVar((*string)(o), "otlp-endpoint", "", "send OpenTelemetry traces of its calls to this OTLP/gRPC collector: host:port (plain), or an http:// or https:// URL (off by default)")
}

// start traces as service (nil: off); Close flushes.
func (o otlpFlag) start(service string) (*tracing.Tracing, error) {
	if o != "" {
		if err := tracing.CheckEndpoint("--otlp-endpoint", string(o)); err != nil {
			return nil, usagef("%v", err)
		}
	}
	return tracing.Start(string(o), service)
}

// workloadNS is what a workload command hands its gateway: nothing when
// --netns names the namespace, else its own (a sidecar sharing the
// workload's network namespace, in a container or a pod).
func workloadNS(netns string) (*os.File, error) {
	if netns != "" {
		return nil, kernel.CheckNamespace(netns)
	}
	return handover.OwnNamespace()
}

// withPodName adds the workload's podName label, as Network Service Mesh
// does, unless --labels gave one: the host name, which in Kubernetes is the
// pod's name (in compose, the container's).
func withPodName(labels map[string]string) map[string]string {
	if _, ok := labels[registry.LabelPod]; ok {
		return labels
	}
	host, err := os.Hostname()
	if err != nil || registry.ValidateLabels(map[string]string{registry.LabelPod: host}) != nil {
		return labels
	}
	if labels == nil {
		labels = map[string]string{}
	}
	labels[registry.LabelPod] = host
	return labels
}

func newEndpointCmd() *cobra.Command {
	var gw, name, service, labels, cidr, netns, payload, listen string
	var lifetime time.Duration
	var ready readyFile
	var otlp otlpFlag
	cmd := &cobra.Command{
		Use:   "endpoint --service NAME --labels k=v,... --cidr PREFIX [--netns NS] [--payload IP|ETHERNET]",
		Short: "Run a network service endpoint: each connection gets an address pair from --cidr and an interface in its network namespace",
		Long: `Run a network service endpoint: each connection gets an address pair from
--cidr and an interface in the endpoint's network namespace: --netns NS on a
host, or by default its own (a sidecar sharing the workload's namespace, in a
container or a pod), which it hands to the gateway over its socket.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service == "" || cidr == "" {
				return usagef("--service and --cidr are required")
			}
			if n, err := registry.ParseName(service); err != nil || n.Domain != "" {
				return usagef("--service %q: a service of this domain, without @DOMAIN (%v)", service, err)
			}
			begin := time.Now()
			lbls, err := registry.ParseLabels(labels)
			if err != nil {
				return usagef("--labels: %v", err)
			}
			lbls = withPodName(lbls)
			ns, err := workloadNS(netns)
			if err != nil {
				return err
			}
			ep, err := endpoint.New(cidr, netns, strings.ToUpper(payload))
			if err != nil {
				return usagef("%v", err)
			}
			if name == "" {
				host, _ := os.Hostname()
				name = fmt.Sprintf("%s-%s-%d", service, strings.ToLower(strings.Split(host, ".")[0]), os.Getpid())
			}
			if listen == "" {
				sock, _ := strings.CutPrefix(gw, "unix://")
				listen = "unix://" + filepath.Join(filepath.Dir(sock), "endpoints", name+".sock")
			}
			path, ok := strings.CutPrefix(listen, "unix://")
			if !ok {
				return usagef("--listen %q: want unix://PATH", listen)
			}
			tr, err := otlp.start("vwire-endpoint")
			if err != nil {
				return err
			}
			defer tr.Close()
			conn, err := dialGateway(gw, nil) // its registration names no namespace
			if err != nil {
				return err
			}
			defer conn.Close()
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			_ = os.Remove(path)
			lis, err := net.Listen("unix", path)
			if err != nil {
				return fmt.Errorf("--listen: %w", err)
			}
			defer os.Remove(path)
			// The gateway that dials it takes its namespace from the socket.
			srv := grpc.NewServer(append(tr.ServerOptions("endpoint"), grpc.Creds(handover.HandNS(ns)))...)
			proxypb.RegisterNetworkServiceServer(srv, ep)
			go srv.Serve(lis)
			defer srv.Stop()
			reg, err := registry.KeepRegistered(cmd.Context(), registrypb.NewRegistryClient(conn), &registrypb.Endpoint{
				Name: name, NetworkServiceNames: []string{service}, Labels: lbls, Url: "unix://" + path,
			}, lifetime, slog.Default())
			if err != nil {
				ready.set("failed: registering endpoint %s: %s", name, describe(err))
				return fmt.Errorf("registering endpoint %s: %s", name, describe(err))
			}
			ready.set("up: endpoint %s of %s registered", name, service)
			defer reg.Close()
			where := netns
			if where == "" {
				where = "this network namespace"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "vwire endpoint %s of %s ready in %v: addresses from %s, interfaces in %s\n",
				name, service, time.Since(begin).Round(time.Millisecond), cidr, where)
			<-cmd.Context().Done()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&gw, "gateway", defaultGateway, "the node's gateway socket")
	f.StringVar(&name, "name", "", "the endpoint's name (default: SERVICE-HOST-PID)")
	f.StringVar(&service, "service", "", "the network service it provides")
	f.StringVar(&labels, "labels", "", "its labels, k=v,... (matched by the service's rules)")
	f.StringVar(&cidr, "cidr", "", "the prefix it hands address pairs out of, one per connection")
	f.StringVar(&netns, "netns", "", "the network namespace (name or path) its interfaces go in (default: its own, handed to the gateway)")
	f.StringVar(&payload, "payload", "IP", "IP or ETHERNET: what the service carries")
	f.StringVar(&listen, "listen", "", "its own socket, which the gateway calls (default: beside the gateway's, endpoints/NAME.sock)")
	ready.add(f)
	f.DurationVar(&lifetime, "lifetime", 0, "how long its registration lives unless refreshed (default: the registry's)")
	otlp.add(f)
	return cmd
}

func newConnectCmd() *cobra.Command {
	var gw, labels, netns, iface, output string
	var once bool
	var accept []string
	var probe time.Duration
	var ready readyFile
	var otlp otlpFlag
	cmd := &cobra.Command{
		Use:   "connect SERVICE[@DOMAIN] --labels k=v,... [--netns NS] [--once] [-o json]",
		Short: "Request a vWire into a network namespace and keep it up (refresh, heal) until stopped",
		Long: `Request a vWire and keep it up (refresh, heal) until stopped. Its interface
goes into --netns NS on a host, or by default into this process's own network
namespace (a sidecar sharing the workload's, in a container or a pod), which
it hands to the gateway over its socket.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := registry.ParseName(args[0]); err != nil {
				return usagef("%v", err)
			}
			if output != "text" && output != "json" {
				return usagef("-o %q: want text or json", output)
			}
			lbls, err := registry.ParseLabels(labels)
			if err != nil {
				return usagef("--labels: %v", err)
			}
			lbls = withPodName(lbls)
			ns, err := workloadNS(netns)
			if err != nil {
				return err
			}
			tr, err := otlp.start("vwire-connect")
			if err != nil {
				return err
			}
			defer tr.Close()
			conn, err := dialGateway(gw, ns, tr.DialOptions("client")...)
			if err != nil {
				return err
			}
			defer conn.Close()
			nsc := proxypb.NewNetworkServiceClient(conn)
			if _, err := gateway.ParseAccept(accept); err != nil {
				return usagef("--accept-routes: %v", err)
			}
			o := client.Options{Service: args[0], Labels: lbls, NetNS: netns, Interface: iface, AcceptRoutes: accept, ProbeInterval: probe}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			begin := time.Now()
			vw, err := client.Request(ctx, nsc, o, "")
			cancel()
			if err != nil {
				ready.set("failed: requesting a vWire to %s: %s", args[0], describe(err))
				return errors.New(describe(err))
			}
			out := cmd.OutOrStdout()
			print := func(kind string, c *proxypb.Connection, extra map[string]any) {
				switch kind {
				case "up", "healed":
					ready.set("up: %s", strings.TrimSpace(client.Describe(c, o)))
				case "closed":
					ready.set("closed: connection %s", c.GetId())
				default:
					ready.set("%s: connection %s: %v", kind, c.GetId(), extra["error"])
				}
				if output == "json" {
					b, _ := protojson.Marshal(c)
					ev := map[string]any{"event": kind, "connection": json.RawMessage(b)}
					for k, v := range extra {
						ev[k] = v
					}
					line, _ := json.Marshal(ev)
					fmt.Fprintln(out, string(line))
					return
				}
				switch kind {
				case "up":
					fmt.Fprintf(out, "%sup in %v\n", client.Describe(c, o), time.Since(begin).Round(time.Millisecond))
				case "healed":
					fmt.Fprintf(out, "data path healed: connection %s, gap %v\n", c.GetId(), extra["gap"])
				case "closed":
					fmt.Fprintf(out, "connection %s closed\n", c.GetId())
				default:
					fmt.Fprintf(out, "%s: connection %s %v\n", kind, c.GetId(), extra["error"])
				}
			}
			print("up", vw, map[string]any{"setup_ms": time.Since(begin).Milliseconds()})
			if once {
				return nil
			}
			o.Reconnected = client.Reconnects(cmd.Context(), conn)
			o.Report = func(ev client.Event) {
				extra := map[string]any{}
				if ev.Err != nil {
					extra["error"] = ev.Err.Error()
				}
				if ev.Kind == "healed" {
					extra["gap"] = ev.Gap.Round(time.Millisecond).String()
					extra["gap_ms"] = ev.Gap.Milliseconds()
				}
				print(ev.Kind, ev.Conn, extra)
			}
			last := client.Keep(cmd.Context(), nsc, o, vw)
			print("closed", last, nil)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&gw, "gateway", defaultGateway, "the node's gateway socket")
	f.StringVar(&labels, "labels", "", "the client's labels, k=v,... (matched by the service's rules)")
	f.StringVar(&netns, "netns", "", "the network namespace (name or path) the interface goes in (default: its own, handed to the gateway)")
	f.StringVar(&iface, "interface", dataplane.DefaultInterface, "the interface's name in that namespace")
	f.StringSliceVar(&accept, "accept-routes", nil, "route prefixes to take from the endpoint's side beyond its addresses, PREFIX,... (0.0.0.0/0 or ::/0: a default route); others are refused")
	f.BoolVar(&once, "once", false, "set the vWire up, print it and exit, leaving it in place until it expires or vwire close")
	f.StringVarP(&output, "output", "o", "text", "text or json (one event a line)")
	f.DurationVar(&probe, "probe-interval", time.Second, "how often to ping the endpoint through the vWire")
	ready.add(f)
	otlp.add(f)
	return cmd
}

// readyFile reports a sidecar's state in a file, for `vwire ready` (a
// pod's startup probe): "up: ..." once its vWire is up or its endpoint
// registered, else what went wrong.
type readyFile struct{ path string }

func (r *readyFile) add(fs *pflag.FlagSet) {
	fs.StringVar(&r.path, "ready-file", "", "write the state here (\"up: …\" or what failed), for vwire ready FILE")
}

func (r *readyFile) set(format string, args ...any) {
	if r.path == "" {
		return
	}
	if err := atomicfile.Write(r.path, []byte(fmt.Sprintf(format, args...)+"\n"), 0o644); err != nil {
		slog.Warn("writing the ready file", "path", r.path, "err", err)
	}
}

func newReadyCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ready FILE",
		Short: "Exit 0 if the vwire connect or endpoint writing FILE (--ready-file) is up, else say why not and exit 1: a pod's startup probe",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if errors.Is(err, fs.ErrNotExist) {
				return errors.New("not up yet: nothing reported so far")
			}
			if err != nil {
				return err
			}
			state := strings.TrimSpace(string(b))
			if strings.HasPrefix(state, "up:") {
				fmt.Fprintln(cmd.OutOrStdout(), state)
				return nil
			}
			return fmt.Errorf("not up: %s", state)
		},
	}
}
