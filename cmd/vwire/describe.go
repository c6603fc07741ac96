package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/proxy/proxypb"
)

func newDescribeCmd() *cobra.Command {
	var cf clientFlags
	var output string
	cmd := &cobra.Command{
		Use:   "describe connection ID | service NAME",
		Short: "Show a connection hop by hop, or a service with what its rules select now",
		Long: `describe connection ID: the connection as this domain stores it, its path hop
by hop (each hop's identity and when its lease expires), the tunnel, MTU and
addresses, and, when its end is on the gateway in the proxy's process, the
WireGuard tunnel's last handshake and bytes and the end's interface counters.

describe service NAME: the service of this domain, and for each of its match
rules the endpoints each route selects right now.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &proxypb.DescribeRequest{}
			switch args[0] {
			case "connection", "connections", "conn":
				req.What = &proxypb.DescribeRequest_Connection{Connection: args[1]}
			case "service", "services", "svc":
				req.What = &proxypb.DescribeRequest_Service{Service: args[1]}
			default:
				return usagef("describe %q: want connection ID or service NAME", args[0])
			}
			if output != "text" && output != "json" {
				return usagef("-o %q: want text or json", output)
			}
			return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := proxypb.NewOperatorClient(conn).Describe(ctx, req)
				if err != nil {
					return err
				}
				w := cmd.OutOrStdout()
				if output == "json" {
					b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(resp)
					fmt.Fprintln(w, string(b))
					return nil
				}
				if c := resp.GetConnection(); c != nil {
					printConnection(w, c, time.Now())
				} else {
					printService(w, resp.GetService())
				}
				return nil
			})
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func printConnection(w io.Writer, d *proxypb.ConnectionDescription, now time.Time) {
	c := d.GetConnection()
	fmt.Fprintf(w, "connection %s: %s → %s, %s\n", c.GetId(), c.GetNetworkService(), orDash(c.GetNetworkServiceEndpointName()), strings.ToLower(c.GetState().String()))
	fmt.Fprintf(w, "requester %s, client %s\n", c.GetRequester(), orDash(c.GetClientId()))
	fmt.Fprintf(w, "payload %s, tunnel %s, MTU %d\n", c.GetPayload(), orDash(d.GetTunnel()), c.GetMtu())
	ipc := c.GetIpContext()
	fmt.Fprintf(w, "client addresses %s, endpoint addresses %s\n", orDash(strings.Join(ipc.GetSrcIpAddrs(), ",")), orDash(strings.Join(ipc.GetDstIpAddrs(), ",")))
	if wg := c.GetMechanism().GetWireguard(); wg != nil {
		fmt.Fprintf(w, "WireGuard %s:%d → %s:%d\n", wg.GetSrcIp(), wg.GetSrcPort(), wg.GetDstIp(), wg.GetDstPort())
	}
	if v := c.GetMechanism().GetVxlan(); v != nil {
		fmt.Fprintf(w, "VXLAN %d %s → %s\n", v.GetVni(), v.GetSrcIp(), v.GetDstIp())
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nHOP\tSPIFFE ID\tLEASE\n")
	for i, s := range c.GetPath().GetSegments() {
		lease := "-"
		if e := s.GetExpires(); e != nil {
			if left := e.AsTime().Sub(now); left > 0 {
				lease = "expires in " + left.Round(time.Second).String()
			} else {
				lease = "EXPIRED " + (-left).Round(time.Second).String() + " ago"
			}
		}
		fmt.Fprintf(tw, "%d %s\t%s\t%s\n", i, s.GetName(), orDash(s.GetSpiffeId()), lease)
	}
	tw.Flush()
	if t := d.GetWireguard(); t != nil {
		handshake := "never"
		if t.GetLastHandshake() != nil {
			handshake = now.Sub(t.GetLastHandshake().AsTime()).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(w, "\nWireGuard tunnel here: last handshake %s, %d bytes sent, %d received\n", handshake, t.GetSentBytes(), t.GetReceivedBytes())
	}
	if i := d.GetInterface(); i != nil {
		fmt.Fprintf(w, "interface here: from the workload %d bytes (%d packets), to it %d bytes (%d packets)\n",
			i.GetFromWorkloadBytes(), i.GetFromWorkloadPackets(), i.GetToWorkloadBytes(), i.GetToWorkloadPackets())
	}
}

func printService(w io.Writer, d *proxypb.ServiceDescription) {
	svc := d.GetService()
	fmt.Fprintf(w, "service %s: payload %s, %d endpoints: %s\n", svc.GetName(), svc.GetPayload(), len(d.GetEndpoints()), orDash(strings.Join(d.GetEndpoints(), ", ")))
	if ids := svc.GetAllowedSpiffeIds(); len(ids) > 0 {
		fmt.Fprintf(w, "allowed: %s\n", strings.Join(ids, ", "))
	}
	if len(d.GetMatches()) == 0 {
		fmt.Fprintln(w, "no match rules: every client gets every endpoint")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintf(tw, "\nMATCH\tSOURCE\tROUTE\tDESTINATION\tSELECTS NOW\n")
	for i, m := range d.GetMatches() {
		source := orDash(formatLabels(m.GetSourceSelector()))
		if m.GetFallthrough() {
			source += " (fallthrough)"
		}
		if m.GetAllEndpoints() {
			fmt.Fprintf(tw, "%d\t%s\t-\t-\tevery endpoint\n", i, source)
			continue
		}
		for j, r := range m.GetRoutes() {
			selects := orDash(strings.Join(r.GetEndpoints(), ", "))
			if r.GetPerClient() {
				selects = "per client (templates over its labels)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\n", i, source, j, orDash(formatLabels(r.GetDestinationSelector())), selects)
		}
	}
}
