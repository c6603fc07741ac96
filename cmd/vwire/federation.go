package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/federation/federationpb"
)

func newFederationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "federation bundle|add|list|remove",
		Short: "This domain's trust bundle, and the domains it federates with",
	}
	cmd.AddCommand(newFederationBundleCmd(), newFederationAddCmd(), newFederationListCmd(), newFederationRemoveCmd())
	return cmd
}

func runFederation(cf *clientFlags, cmd *cobra.Command, f func(context.Context, federationpb.FederationClient) error) error {
	return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
		return f(ctx, federationpb.NewFederationClient(conn))
	})
}

func newFederationBundleCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "bundle",
		Short: "Print this domain's trust bundle (SPIFFE format), for a peer's `vwire federation add --bundle`",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFederation(&cf, cmd, func(ctx context.Context, c federationpb.FederationClient) error {
				b, err := c.GetBundle(ctx, &federationpb.GetBundleRequest{})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b.GetSpiffe())
				return err
			})
		},
	}
	cf.add(cmd)
	return cmd
}

func newFederationAddCmd() *cobra.Command {
	var cf clientFlags
	var endpoint, bundleFile, td, endpointID string
	var trustOnly bool
	var addresses []string
	cmd := &cobra.Command{
		Use:   "add DOMAIN --bundle FILE [--bundle-endpoint URL] [--trust-domain TD] [--endpoint-id ID] [--addresses PREFIX,...]",
		Short: "Federate with a peer domain, starting from its bundle; afterwards its bundle is fetched and refreshed",
		Example: `  # on b: vwire federation bundle > b.bundle; then on a:
  vwire federation add b.example --bundle-endpoint https://b.example:8443 --bundle b.bundle`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bundleFile == "" {
				return usagef("--bundle FILE is required: the peer's bundle as `vwire federation bundle` prints it (DNS never establishes trust)")
			}
			if _, err := federation.ParseRanges(addresses); err != nil {
				return usagef("--addresses: %v", err)
			}
			raw, err := os.ReadFile(bundleFile)
			if err != nil {
				return err
			}
			return runFederation(&cf, cmd, func(ctx context.Context, c federationpb.FederationClient) error {
				st, err := c.AddPeer(ctx, &federationpb.AddPeerRequest{
					Peer:   &federationpb.Peer{Domain: args[0], TrustDomain: td, BundleEndpointUrl: endpoint, EndpointId: endpointID, TrustOnly: trustOnly, Addresses: addresses},
					Bundle: raw,
				})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "federating with %s (trust domain %s, bundle endpoint %s as %s)\n",
					st.GetPeer().GetDomain(), st.GetPeer().GetTrustDomain(), st.GetPeer().GetBundleEndpointUrl(), st.GetPeer().GetEndpointId())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&endpoint, "bundle-endpoint", "", "the peer's SPIFFE bundle endpoint URL (https://HOST:PORT; default: from its _spiffe-bundle._tcp SRV record)")
	cmd.Flags().StringVar(&bundleFile, "bundle", "", "the peer's bundle to start from (SPIFFE JSON or PEM)")
	cmd.Flags().StringVar(&td, "trust-domain", "", "the peer's trust domain (default: DOMAIN)")
	cmd.Flags().BoolVar(&trustOnly, "trust-only", false, "trust the peer but keep its workloads out of services without their own policy")
	cmd.Flags().StringVar(&endpointID, "endpoint-id", "", "the SPIFFE ID the bundle endpoint presents (default: spiffe://TD/vwire/proxy)")
	cmd.Flags().StringSliceVar(&addresses, "addresses", nil, "the address ranges the peer may assign across its vWires, PREFIX,... (its endpoints' and the ones they give this domain's clients); an answer with another is refused. Default: any")
	peerFlags(cmd.Flags(), "bundle-endpoint", "trust-domain", "endpoint-id")
	cf.add(cmd)
	return cmd
}

func newFederationListCmd() *cobra.Command {
	var cf clientFlags
	var output string
	cmd := &cobra.Command{
		Use:   "list [-o table|json]",
		Short: "Show each peer, its trust domain, when its bundle was last fetched, its expiry and any error",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("-o %q: want table or json", output)
			}
			return runFederation(&cf, cmd, func(ctx context.Context, c federationpb.FederationClient) error {
				resp, err := c.ListPeers(ctx, &federationpb.ListPeersRequest{})
				if err != nil {
					return err
				}
				if output == "json" {
					type row struct {
						Domain         string `json:"domain"`
						TrustDomain    string `json:"trustDomain"`
						BundleEndpoint string `json:"bundleEndpoint"`
						EndpointID     string `json:"endpointID"`
						LastFetched    string `json:"lastFetched,omitempty"`
						Expires        string `json:"expires,omitempty"`
						Authorities    int32  `json:"authorities"`
						Source         string `json:"source,omitempty"`
						LastError      string `json:"lastError,omitempty"`
					}
					rows := []row{}
					for _, p := range resp.GetPeers() {
						rows = append(rows, row{p.GetPeer().GetDomain(), p.GetPeer().GetTrustDomain(), p.GetPeer().GetBundleEndpointUrl(),
							p.GetPeer().GetEndpointId(), rfc3339(p.GetLastFetched()), rfc3339(p.GetExpires()), p.GetAuthorities(), p.GetSource(), p.GetLastError()})
					}
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(rows)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 3, ' ', 0)
				fmt.Fprintln(tw, "DOMAIN\tTRUST DOMAIN\tBUNDLE ENDPOINT\tTRUSTED\tLAST FETCHED\tEXPIRES\tERROR")
				for _, p := range resp.GetPeers() {
					fetched := "never"
					switch {
					case p.GetLastFetched() != nil:
						fetched = time.Since(p.GetLastFetched().AsTime()).Round(time.Second).String() + " ago"
					case p.GetSource() == federation.FromSPIRE:
						fetched = "-" // SPIRE fetches it
					}
					trusted := "nothing"
					if p.GetSource() != "" {
						trusted = fmt.Sprintf("%d %s from %s", p.GetAuthorities(), plural(int(p.GetAuthorities()), "authority", "authorities"), p.GetSource())
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.GetPeer().GetDomain(), p.GetPeer().GetTrustDomain(),
						orDash(p.GetPeer().GetBundleEndpointUrl()), trusted, fetched, orDash(rfc3339(p.GetExpires())), orDash(p.GetLastError()))
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cf.add(cmd)
	return cmd
}

func newFederationRemoveCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "remove DOMAIN",
		Short: "Stop federating with a domain and forget its bundle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runFederation(&cf, cmd, func(ctx context.Context, c federationpb.FederationClient) error {
				if _, err := c.RemovePeer(ctx, &federationpb.RemovePeerRequest{Domain: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "no longer federating with %s\n", args[0])
				return nil
			})
		},
	}
	cf.add(cmd)
	return cmd
}

func newCACmd() *cobra.Command {
	var cf clientFlags
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Rotate the built-in CA: publish a new root, switch to it, retire the old one, without breaking peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFederation(&cf, cmd, func(ctx context.Context, c federationpb.FederationClient) error {
				resp, err := c.RotateCA(ctx, &federationpb.RotateCARequest{})
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "new root published; it starts issuing at %s (%s), and the old root is retired after the overlap\n",
					rfc3339(resp.GetAt()), resp.GetNextStep())
				return nil
			})
		},
	}
	cf.add(rotate)
	var dataDir, out string
	var ttl time.Duration
	issue := &cobra.Command{
		Use:   "issue SPIFFE-ID --out DIR [--data-dir DIR] [--ttl 24h]",
		Short: "Issue an SVID from the built-in CA, on the domain's host: credentials for a node's vwire gateway",
		Long: `Issue an SVID from the built-in CA that vwire domain keeps in DATA-DIR/ca, on
the domain's host (it reads the CA's key): svid.pem, svid.key and bundle.pem in
--out, for vwire gateway --credentials. A gateway's ID is
spiffe://TD/vwire/gateway/NODE. Issue again into the same --out (and copy it
to the node) before --ttl passes, and after vwire ca rotate: a running gateway
takes the new files at its next handshake, without a restart. A SPIRE agent
(--spiffe-socket) renews by itself.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := spiffeid.FromString(args[0])
			if err != nil {
				return usagef("%q is not a SPIFFE ID: %v", args[0], err)
			}
			if out == "" {
				return usagef("--out DIR is required: where the credentials go")
			}
			dir := filepath.Join(dataDir, "ca")
			if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err != nil {
				return fmt.Errorf("no built-in CA in %s (give the domain's --data-dir): %w", dir, err)
			}
			ca, err := federation.OpenCA(dir, id.TrustDomain())
			if err != nil {
				return err
			}
			if err := ca.WriteCredentials(out, id, ttl); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "credentials for %s in %s, valid for %v\n", id, out, ttl)
			return nil
		},
	}
	issue.Flags().StringVar(&dataDir, "data-dir", "vwire-data", "the domain's data directory, whose ca/ holds the built-in CA")
	issue.Flags().StringVar(&out, "out", "", "the directory to write svid.pem, svid.key and bundle.pem to")
	issue.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the SVID is valid")
	var initDir, initTD string
	initCA := &cobra.Command{
		Use:   "init --trust-domain TD [--data-dir DIR]",
		Short: "Create the built-in CA in DATA-DIR/ca before any domain starts (for replicated proxies that share it)",
		Long: `Create the built-in CA of trust domain TD in DATA-DIR/ca, unless it is there
already, and print its bundle. vwire domain creates its CA itself; replicated
vwire proxy processes that share one data directory need it made once, before
they start, so that they do not each make one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			td, err := spiffeid.TrustDomainFromString(initTD)
			if err != nil || initTD == "" {
				return usagef("--trust-domain %q: a trust domain is required (e.g. dc.marsha.example)", initTD)
			}
			ca, err := federation.OpenCA(filepath.Join(initDir, "ca"), td)
			if err != nil {
				return err
			}
			pem, err := ca.Bundle().Marshal()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	}
	initCA.Flags().StringVar(&initDir, "data-dir", "vwire-data", "the data directory whose ca/ gets the CA")
	initCA.Flags().StringVar(&initTD, "trust-domain", "", "the CA's trust domain")
	cmd := &cobra.Command{Use: "ca rotate|issue|init", Short: "The built-in CA"}
	cmd.AddCommand(rotate, issue, initCA)
	return cmd
}

func rfc3339(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().Format(time.RFC3339)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
