package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
)

// errDiagnosed: a hop failed; diagnose printed which and why.
var errDiagnosed = errors.New("a hop of the path fails (see above)")

func newDiagnoseCmd() *cobra.Command {
	var cf clientFlags
	var labels, clientID, output string
	cmd := &cobra.Command{
		Use:   "diagnose SERVICE[@DOMAIN] [--labels k=v,...] [--client-id ID]",
		Short: "Walk the path a request for SERVICE@DOMAIN would take and say where it fails, and what to do",
		Long: `Walk the path a vWire request for SERVICE@DOMAIN would take, hop by hop, from
this domain's proxy (its DNS server, federation, identity and gateway): the
SRV records of the domain's proxies, the federation with it and its bundle,
its proxy answering ours, the service, its policy for the client
(--client-id, default a root workload of this domain), the endpoints its rules
select for the client's labels, the MTU the gateway's tunnels leave, and the
WireGuard handshakes of the live vWires to it. It stops at the first hop that
fails, says why and what to do, and exits 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := registry.ParseName(args[0]); err != nil {
				return usagef("%v", err)
			}
			lbls, err := registry.ParseLabels(labels)
			if err != nil {
				return usagef("--labels: %v", err)
			}
			if output != "text" && output != "json" {
				return usagef("-o %q: want text or json", output)
			}
			return cf.run(cmd, func(ctx context.Context, conn *grpc.ClientConn) error {
				resp, err := proxypb.NewOperatorClient(conn).Diagnose(ctx, &proxypb.DiagnoseRequest{NetworkService: args[0], Labels: lbls, ClientId: clientID})
				if err != nil {
					return err
				}
				if output == "json" {
					b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(resp)
					fmt.Fprintln(cmd.OutOrStdout(), string(b))
				} else {
					printDiagnosis(cmd.OutOrStdout(), resp)
				}
				for _, s := range resp.GetSteps() {
					if s.GetResult() == proxypb.DiagnoseStep_FAILED {
						return errDiagnosed
					}
				}
				return nil
			})
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVar(&labels, "labels", "", "the client's labels, k=v,... (as vwire connect --labels)")
	cmd.Flags().StringVar(&clientID, "client-id", "", "the client's SPIFFE ID, which the service's policy judges (default: spiffe://TD/workload/uid/0)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// printDiagnosis prints one line per hop, and for a failed one what to do.
func printDiagnosis(w io.Writer, resp *proxypb.DiagnoseResponse) {
	for _, s := range resp.GetSteps() {
		mark := map[proxypb.DiagnoseStep_Result]string{proxypb.DiagnoseStep_OK: "ok  ", proxypb.DiagnoseStep_FAILED: "FAIL", proxypb.DiagnoseStep_SKIPPED: "-   "}[s.GetResult()]
		fmt.Fprintf(w, "%s %-10s %s\n", mark, s.GetHop(), s.GetDetail())
		if s.GetAdvice() != "" {
			fmt.Fprintf(w, "     %-10s → %s\n", "", strings.TrimSpace(s.GetAdvice()))
		}
	}
}
