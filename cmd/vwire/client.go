package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// clientFlags are the flags every client of a domain takes.
type clientFlags struct {
	registry     string
	credentials  string
	spiffeSocket string
	timeout      time.Duration
}

func (c *clientFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.registry, "registry", registry.DefaultListen, "the domain's gRPC address (its --listen)")
	cmd.Flags().StringVar(&c.credentials, "credentials", "vwire-data/admin", "a credentials directory (svid.pem, svid.key, bundle.pem), as `vwire domain` writes to DATA-DIR/admin")
	cmd.Flags().StringVar(&c.spiffeSocket, "spiffe-socket", "", "get an SVID from this SPIRE agent socket instead of --credentials")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 30*time.Second, "how long a command may take")
}

// openSource is the SVID a command proves itself with: the SPIRE agent's
// at socket (the first that prefer accepts), else the credentials
// directory's.
func openSource(ctx context.Context, socket, credentials string, prefer func(spiffeid.ID) bool) (federation.Source, error) {
	if socket != "" {
		return federation.WorkloadSource(ctx, socket, prefer)
	}
	return federation.LoadCredentials(credentials)
}

// run connects to the domain with the chosen credentials and calls f.
func (c *clientFlags) run(cmd *cobra.Command, f func(context.Context, *grpc.ClientConn) error) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	defer cancel()
	// The agent may hand this binary the domain's SVIDs too: the CLI is
	// the admin.
	src, err := openSource(ctx, c.spiffeSocket, c.credentials, func(id spiffeid.ID) bool { return id.Path() == federation.AdminPath })
	if err != nil {
		return err
	}
	defer src.Close()
	conn, err := federation.DialDomain(c.registry, src)
	if err != nil {
		return err
	}
	defer conn.Close()
	return f(ctx, conn)
}

// runRegistry is run with a registry client.
func (c *clientFlags) runRegistry(cmd *cobra.Command, f func(context.Context, registrypb.RegistryClient) error) error {
	return c.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
		return f(ctx, registrypb.NewRegistryClient(conn))
	})
}

func newApplyCmd() *cobra.Command {
	var cf clientFlags
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE|-",
		Short: "Create or replace network services and endpoints from YAML manifests, all or nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usagef("-f FILE (or - for standard input) is required")
			}
			in := cmd.InOrStdin()
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			objs, err := registry.DecodeManifests(in)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			return cf.runRegistry(cmd, func(ctx context.Context, cl registrypb.RegistryClient) error {
				resp, err := cl.Apply(ctx, objs)
				if err != nil {
					return err
				}
				for _, s := range resp.GetServices() {
					fmt.Fprintf(cmd.OutOrStdout(), "networkservice/%s applied\n", s.GetName())
				}
				for _, e := range resp.GetEndpoints() {
					fmt.Fprintf(cmd.OutOrStdout(), "networkserviceendpoint/%s applied\n", e.GetName())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "a YAML file of manifests (- for standard input)")
	cf.add(cmd)
	return cmd
}

// resource names a kind the way kubectl users spell it.
func resource(arg string) (string, error) {
	switch arg {
	case "services", "service", "svc", "networkservices", "networkservice", "ns":
		return "services", nil
	case "endpoints", "endpoint", "ep", "nse", "networkserviceendpoints", "networkserviceendpoint":
		return "endpoints", nil
	case "connections", "connection", "conn":
		return "connections", nil
	}
	return "", usagef("unknown resource %q (want services, endpoints or connections)", arg)
}

func newGetCmd() *cobra.Command {
	var cf clientFlags
	var output, service, sourceLabels string
	cmd := &cobra.Command{
		Use:   "get services|endpoints|connections [NAME] [-o table|json|yaml]",
		Short: "List network services or endpoints; with --service and --source-labels, what the match rules select",
		Example: `  vwire get services
  vwire get endpoints --service secure-intranet-connectivity --source-labels app=firewall
  vwire get endpoint firewall-1 -o yaml`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := resource(args[0])
			if err != nil {
				return err
			}
			if output != "table" && output != "json" && output != "yaml" {
				return usagef("-o %q: want table, json or yaml", output)
			}
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			if kind == "services" && (service != "" || sourceLabels != "") {
				return usagef("--service and --source-labels go with `get endpoints`")
			}
			if sourceLabels != "" && service == "" {
				return usagef("--source-labels needs --service: labels are matched against a service's rules")
			}
			labels, err := registry.ParseLabels(sourceLabels)
			if err != nil {
				return usagef("--source-labels: %v", err)
			}
			if kind == "connections" {
				if service != "" || sourceLabels != "" {
					return usagef("--service and --source-labels go with `get endpoints`")
				}
				return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
					return getConnections(ctx, cmd.OutOrStdout(), proxypb.NewNetworkServiceClient(conn), name, output)
				})
			}
			return cf.runRegistry(cmd, func(ctx context.Context, cl registrypb.RegistryClient) error {
				if kind == "services" {
					svcs, err := getServices(ctx, cl, name)
					if err != nil {
						return err
					}
					return printObjects(cmd.OutOrStdout(), output, kind, name != "", svcs, nil)
				}
				eps, err := getEndpoints(ctx, cl, name, service, labels)
				if err != nil {
					return err
				}
				return printObjects(cmd.OutOrStdout(), output, kind, name != "", nil, eps)
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml (yaml applies again with vwire apply)")
	cmd.Flags().StringVar(&service, "service", "", "only endpoints of this network service")
	cmd.Flags().StringVar(&sourceLabels, "source-labels", "", "a client's labels (k=v,...): show what the service's match rules select for it, in order")
	cf.add(cmd)
	return cmd
}

func getServices(ctx context.Context, cl registrypb.RegistryClient, name string) ([]*registrypb.NetworkService, error) {
	if name != "" {
		s, err := cl.GetService(ctx, &registrypb.GetServiceRequest{Name: name})
		return []*registrypb.NetworkService{s}, err
	}
	resp, err := cl.ListServices(ctx, &registrypb.ListServicesRequest{})
	return resp.GetServices(), err
}

func getEndpoints(ctx context.Context, cl registrypb.RegistryClient, name, service string, labels map[string]string) ([]*registrypb.Endpoint, error) {
	switch {
	case name != "":
		e, err := cl.GetEndpoint(ctx, &registrypb.GetEndpointRequest{Name: name})
		if err == nil && service != "" && !slices.Contains(e.GetNetworkServiceNames(), service) {
			return nil, fmt.Errorf("endpoint %q does not provide %q", name, service)
		}
		return []*registrypb.Endpoint{e}, err
	case service != "":
		stream, err := cl.Find(ctx, &registrypb.FindRequest{Service: service, SourceLabels: labels})
		if err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		return resp.GetSnapshot().GetEndpoints(), nil
	}
	resp, err := cl.ListEndpoints(ctx, &registrypb.ListEndpointsRequest{})
	return resp.GetEndpoints(), err
}

func printObjects(w io.Writer, output, kind string, single bool, svcs []*registrypb.NetworkService, eps []*registrypb.Endpoint) error {
	switch output {
	case "yaml":
		return registry.EncodeManifests(w, svcs, eps)
	case "json":
		docs := registry.ManifestDocuments(svcs, eps)
		var v any = map[string]any{"apiVersion": "v1", "kind": "List", "items": docs}
		if single && len(docs) == 1 {
			v = docs[0]
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	if kind == "services" {
		fmt.Fprintln(tw, "NAME\tPAYLOAD\tACROSS DOMAINS\tMATCHES")
		for _, s := range svcs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.GetName(), s.GetPayload(), acrossDomains(s), len(s.GetMatches()))
		}
		return tw.Flush()
	}
	fmt.Fprintln(tw, "NAME\tSERVICES\tLABELS\tURL\tEXPIRES\tOWNER")
	for _, e := range eps {
		expires := "never"
		if e.GetExpiresAt() != nil {
			expires = time.Until(e.GetExpiresAt().AsTime()).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.GetName(), strings.Join(e.GetNetworkServiceNames(), ","),
			formatLabels(e.GetLabels()), orDash(e.GetUrl()), expires, e.GetOwner())
	}
	return tw.Flush()
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// acrossDomains is how a service's vWires cross domains.
func acrossDomains(s *registrypb.NetworkService) string {
	switch {
	case s.GetPlainVxlan():
		return "plain VXLAN (unencrypted)"
	case s.GetPayload() == registrypb.Payload_ETHERNET:
		return "VXLAN in WireGuard"
	}
	return "WireGuard"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newDeleteCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "delete service|endpoint NAME",
		Short: "Delete a network service or an endpoint (only its owner may delete an endpoint)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := resource(args[0])
			if err != nil {
				return err
			}
			if kind == "connections" {
				return usagef("close a connection with: vwire close %s", args[1])
			}
			return cf.runRegistry(cmd, func(ctx context.Context, cl registrypb.RegistryClient) error {
				if kind == "services" {
					_, err = cl.DeleteService(ctx, &registrypb.DeleteServiceRequest{Name: args[1]})
				} else {
					_, err = cl.UnregisterEndpoint(ctx, &registrypb.UnregisterEndpointRequest{Name: args[1]})
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%s deleted\n", strings.TrimSuffix(kind, "s"), args[1])
				return nil
			})
		},
	}
	cf.add(cmd)
	return cmd
}
