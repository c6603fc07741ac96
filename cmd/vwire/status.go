package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/proxy/proxypb"
)

func newStatusCmd() *cobra.Command {
	var cf clientFlags
	var output string
	cmd := &cobra.Command{
		Use:   "status [-o text|json]",
		Short: "This domain's health at a glance: etcd, its proxies, peers, gateways and connections",
		Long: `Show this domain's health as its proxy sees it: the etcd cluster's members and
leader, the proxy replicas its _vwire._tcp SRV records resolve to, each
federated peer (its proxy answering a handshake now, its bundle's age,
expiry and next refresh), the domain's gateways with the vWires through
each, and the connections by state.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usagef("-o %q: want text or json", output)
			}
			return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				st, err := proxypb.NewOperatorClient(conn).Status(ctx, &proxypb.StatusRequest{})
				if err != nil {
					return err
				}
				if output == "json" {
					b, _ := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(st)
					fmt.Fprintln(cmd.OutOrStdout(), string(b))
					return nil
				}
				printStatus(cmd.OutOrStdout(), st, time.Now())
				return nil
			})
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// printStatus renders a domain's status as a few short tables.
func printStatus(w io.Writer, st *proxypb.DomainStatus, now time.Time) {
	fmt.Fprintf(w, "domain %s (trust domain %s): %d services, %d endpoints\n", st.GetDomain(), st.GetTrustDomain(), st.GetServices(), st.GetEndpoints())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()

	fmt.Fprintf(tw, "\nETCD MEMBER\tCLIENT URLS\tSTATE\n")
	if st.GetEtcdError() != "" {
		fmt.Fprintf(tw, "-\t-\t%s\n", st.GetEtcdError())
	}
	for _, m := range st.GetEtcdMembers() {
		state := "follower"
		switch {
		case m.GetError() != "":
			state = "unreachable: " + m.GetError()
		case m.GetLeader():
			state = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", orDash(m.GetName()), strings.Join(m.GetClientUrls(), ","), state)
	}

	fmt.Fprintf(tw, "\nPROXY (_vwire._tcp.%s)\tADDRESSES\tPRIORITY/WEIGHT\n", st.GetDomain())
	if st.GetProxiesError() != "" {
		fmt.Fprintf(tw, "-\t-\t%s\n", st.GetProxiesError())
	}
	for _, p := range st.GetProxies() {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\n", p.GetTarget(), strings.Join(p.GetAddresses(), ","), p.GetPriority(), p.GetWeight())
	}

	fmt.Fprintf(tw, "\nPEER\tREACHABLE\tBUNDLE\tAGE\tEXPIRES IN\tNEXT REFRESH\tERROR\n")
	for _, p := range st.GetPeers() {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\t%s\n", p.GetDomain(), p.GetReachable(), orDash(p.GetBundleSource()),
			since(now, p.GetBundleFetched()), until(now, p.GetBundleExpires()), until(now, p.GetNextRefresh()), orDash(p.GetError()))
	}

	fmt.Fprintf(tw, "\nGATEWAY\tSPIFFE ID\tVWIRES\n")
	for _, g := range st.GetGateways() {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", g.GetNode(), g.GetSpiffeId(), g.GetVwires())
	}

	var states []string
	for s, n := range st.GetConnections() {
		states = append(states, fmt.Sprintf("%s %d", s, n))
	}
	sort.Strings(states)
	fmt.Fprintf(tw, "\nCONNECTIONS\t%s\n", orDash(strings.Join(states, ", ")))
}

func since(now time.Time, t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return now.Sub(t.AsTime()).Round(time.Second).String()
}

func until(now time.Time, t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Sub(now).Round(time.Second).String()
}
