package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/vwire/vwire/demo"
)

func newDemoCmd() *cobra.Command {
	o := demo.Options{}
	cmd := &cobra.Command{
		Use:   "demo [--keep]",
		Short: "Run Marsha's four domains on this machine (as root) and connect a client in three of them to the fourth",
		Long: `Run Marsha's four domains on this machine, as root: public-k8s, private-k8s,
vim and dc (.marsha.example), each a network namespace on a shared "internet"
bridge running vwire domain, a DNS server for their zones, federation between
all of them, the service marshas-app-connectivity with two endpoints in dc, and
a client in each of the other three domains. It prints what each client got
(interface, address, endpoint, path, tunnel, ping round trip) and a verdict,
and removes every namespace, process and file it made when it ends: at once,
or with --keep when you press Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Bin, err = os.Executable(); err != nil {
				return err
			}
			o.Out = cmd.OutOrStdout()
			_, err = demo.Run(cmd.Context(), o)
			return err
		},
	}
	cmd.Flags().BoolVar(&o.Keep, "keep", false, "leave it running until Ctrl-C and print commands to look around")
	cmd.Flags().StringVar(&o.Prefix, "prefix", "vwire-", "of the names of the network namespaces it makes")
	return cmd
}
