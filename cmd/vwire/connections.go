package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/proxy/proxypb"
)

// getConnections prints the connections the caller may see (all, for the
// admin): the first event of Monitor.
func getConnections(ctx context.Context, w io.Writer, c proxypb.NetworkServiceClient, id, output string) error {
	scope := &proxypb.MonitorScope{}
	if id != "" {
		scope.ConnectionIds = []string{id}
	}
	stream, err := c.Monitor(ctx, scope)
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	conns := make([]*proxypb.Connection, 0, len(first.GetConnections()))
	for _, conn := range first.GetConnections() {
		conns = append(conns, conn)
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].GetId() < conns[j].GetId() })
	if id != "" && len(conns) == 0 {
		return fmt.Errorf("connection %q is not known here (closed, or expired)", id)
	}
	if output != "table" {
		var items []any
		for _, conn := range conns {
			b, err := protojson.Marshal(conn)
			if err != nil {
				return err
			}
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return err
			}
			items = append(items, v)
		}
		if output == "yaml" {
			return yaml.NewEncoder(w).Encode(items)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(items)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "ID\tSERVICE\tENDPOINT\tSTATE\tPATH\tCLIENT\tREQUESTER")
	for _, conn := range conns {
		var hops []string
		for _, s := range conn.GetPath().GetSegments() {
			hops = append(hops, s.GetName())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", conn.GetId(), conn.GetNetworkService(), conn.GetNetworkServiceEndpointName(),
			conn.GetState(), orDash(strings.Join(hops, ">")), orDash(conn.GetClientId()), orDash(conn.GetRequester()))
	}
	return tw.Flush()
}

func newCloseCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "close CONNECTION-ID",
		Short: "Close a connection: both ends, in every domain on its path",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				if _, err := proxypb.NewNetworkServiceClient(conn).Close(ctx, &proxypb.Connection{Id: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "connection/%s closed\n", args[0])
				return nil
			})
		},
	}
	cf.add(cmd)
	return cmd
}
