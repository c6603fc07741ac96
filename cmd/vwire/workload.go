package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/client"
	"github.com/vwire/vwire/endpoint"
	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// defaultGateway is the socket of `vwire domain` run with its defaults.
const defaultGateway = "unix://vwire-data/gateway.sock"

// dialGateway connects to the node's gateway socket. The socket is the
// node's trust boundary (owner only); the gateway learns who calls from
// the kernel.
func dialGateway(addr string) (*grpc.ClientConn, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || path == "" {
		return nil, usagef("--gateway %q: want unix://PATH, the gateway's socket (DATA-DIR/gateway.sock of vwire domain)", addr)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--gateway %s: %w (is vwire domain running with --dataplane kernel?)", addr, err)
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

func newEndpointCmd() *cobra.Command {
	var gw, name, service, labels, cidr, netns, payload, listen string
	var lifetime time.Duration
	cmd := &cobra.Command{
		Use:   "endpoint --service NAME --labels k=v,... --cidr PREFIX --netns NS [--payload IP|ETHERNET]",
		Short: "Run a network service endpoint: each connection gets an address pair from --cidr and an interface in --netns",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service == "" || cidr == "" || netns == "" {
				return usagef("--service, --cidr and --netns are required")
			}
			if n, err := registry.ParseName(service); err != nil || n.Domain != "" {
				return usagef("--service %q: a service of this domain, without @DOMAIN (%v)", service, err)
			}
			begin := time.Now()
			lbls, err := registry.ParseLabels(labels)
			if err != nil {
				return usagef("--labels: %v", err)
			}
			if err := kernel.CheckNamespace(netns); err != nil {
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
			conn, err := dialGateway(gw)
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
			srv := grpc.NewServer()
			proxypb.RegisterNetworkServiceServer(srv, ep)
			go srv.Serve(lis)
			defer srv.Stop()
			reg, err := registry.KeepRegistered(cmd.Context(), registrypb.NewRegistryClient(conn), &registrypb.Endpoint{
				Name: name, NetworkServiceNames: []string{service}, Labels: lbls, Url: "unix://" + path,
			}, lifetime, slog.Default())
			if err != nil {
				return fmt.Errorf("registering endpoint %s: %s", name, describe(err))
			}
			defer reg.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "vwire endpoint %s of %s ready in %v: addresses from %s, interfaces in %s\n",
				name, service, time.Since(begin).Round(time.Millisecond), cidr, netns)
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
	f.StringVar(&netns, "netns", "", "the network namespace (name or path) its interfaces go in")
	f.StringVar(&payload, "payload", "IP", "IP or ETHERNET: what the service carries")
	f.StringVar(&listen, "listen", "", "its own socket, which the gateway calls (default: beside the gateway's, endpoints/NAME.sock)")
	f.DurationVar(&lifetime, "lifetime", 0, "how long its registration lives unless refreshed (default: the registry's)")
	return cmd
}

func newConnectCmd() *cobra.Command {
	var gw, labels, netns, iface, output string
	var once bool
	var probe time.Duration
	cmd := &cobra.Command{
		Use:   "connect SERVICE[@DOMAIN] --labels k=v,... --netns NS [--once] [-o json]",
		Short: "Request a vWire into a network namespace and keep it up (refresh, heal) until stopped",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := registry.ParseName(args[0]); err != nil {
				return usagef("%v", err)
			}
			if netns == "" {
				return usagef("--netns is required: the network namespace the interface goes in")
			}
			if output != "text" && output != "json" {
				return usagef("-o %q: want text or json", output)
			}
			lbls, err := registry.ParseLabels(labels)
			if err != nil {
				return usagef("--labels: %v", err)
			}
			conn, err := dialGateway(gw)
			if err != nil {
				return err
			}
			defer conn.Close()
			nsc := proxypb.NewNetworkServiceClient(conn)
			o := client.Options{Service: args[0], Labels: lbls, NetNS: netns, Interface: iface, ProbeInterval: probe}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			begin := time.Now()
			vw, err := client.Request(ctx, nsc, o, "")
			cancel()
			if err != nil {
				return errors.New(describe(err))
			}
			out := cmd.OutOrStdout()
			print := func(kind string, c *proxypb.Connection, extra map[string]any) {
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
	f.StringVar(&netns, "netns", "", "the network namespace (name or path) the interface goes in")
	f.StringVar(&iface, "interface", dataplane.DefaultInterface, "the interface's name in that namespace")
	f.BoolVar(&once, "once", false, "set the vWire up, print it and exit, leaving it in place until it expires or vwire close")
	f.StringVarP(&output, "output", "o", "text", "text or json (one event a line)")
	f.DurationVar(&probe, "probe-interval", time.Second, "how often to ping the endpoint through the vWire")
	return cmd
}
