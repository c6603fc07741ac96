package main

import (
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/registry"
)

func newDomainCmd() *cobra.Command {
	cfg := domain.NewConfig()
	cfg.DataplaneKind = "auto"
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "domain --name DOMAIN [--data-dir DIR] [--listen ADDR] [--bundle-listen ADDR]",
		Short: "Run every role of one domain in one process (embedded etcd, registry, CA, federation)",
		Long: `Run every role of one domain in one process: an embedded etcd (or
--etcd-endpoints), the registry, the built-in development CA (unless
--spiffe-socket names a SPIRE agent), federation with peer domains, and with
--bundle-listen the SPIFFE bundle endpoint peers fetch this domain's bundle
from. The CA writes admin credentials for the command-line client to
DIR/admin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.Default().With("role", "domain")
			if err := kf.configure(cmd.Context(), cfg); err != nil {
				return err
			}
			return serve(cmd, "domain", cfg.Name, cfg.DataDir, cfg.SpiffeSocket, func() (server, error) {
				d, err := domain.Start(cmd.Context(), cfg)
				if err != nil {
					return nil, err
				}
				if err := kf.start(cmd.Context(), d, cfg.Logger); err != nil {
					d.Close()
					return nil, err
				}
				if u := d.BundleURL(); u != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "bundle endpoint: %s (endpoint ID spiffe://%s/vwire/proxy)\n", u, d.TD.Name())
				}
				return d, nil
			})
		},
	}
	cfg.AddFlags(cmd.Flags())
	kf.add(cmd.Flags())
	cmd.Flags().String("config", "", "a YAML file of settings named as these flags")
	return cmd
}

func newProxyCmd() *cobra.Command {
	cfg := domain.NewConfig()
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "proxy --name DOMAIN --etcd-endpoints URL,... [--listen ADDR] [--bundle-listen ADDR]",
		Short: "Run a domain's control plane and public edge on the domain's etcd cluster",
		Long: `Run a domain's proxy: its control plane and public edge (the registry API,
forwarding of service@domain, connections, federation and the bundle
endpoint), on the domain's external etcd cluster, so that several replicas
can serve one domain behind its _vwire._tcp SRV records. It needs
--etcd-endpoints: a proxy keeps no data of its own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(cfg.EtcdEndpoints) == 0 {
				return usagef("--etcd-endpoints is required: a proxy keeps its state in the domain's etcd (for one process with an embedded etcd, run vwire domain)")
			}
			cfg.Logger = slog.Default().With("role", "proxy")
			if err := kf.configure(cmd.Context(), cfg); err != nil {
				return err
			}
			return serve(cmd, "proxy", cfg.Name, cfg.DataDir, cfg.SpiffeSocket, func() (server, error) {
				d, err := domain.Start(cmd.Context(), cfg)
				if err != nil {
					return nil, err
				}
				if err := kf.start(cmd.Context(), d, cfg.Logger); err != nil {
					d.Close()
					return nil, err
				}
				return d, nil
			})
		},
	}
	cfg.AddFlags(cmd.Flags())
	kf.add(cmd.Flags())
	cmd.Flags().String("config", "", "a YAML file of settings named as these flags")
	return cmd
}

func newRegistryCmd() *cobra.Command {
	cfg := registry.NewConfig()
	cmd := &cobra.Command{
		Use:   "registry --name DOMAIN [--etcd-endpoints URL,...]",
		Short: "Run a domain's registry alone (embedded etcd, or an external cluster)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Logger = slog.Default().With("role", "registry")
			return serve(cmd, "registry", cfg.Name, cfg.DataDir, cfg.SpiffeSocket, func() (server, error) {
				return registry.Start(cmd.Context(), cfg)
			})
		},
	}
	cfg.AddFlags(cmd.Flags())
	cmd.Flags().String("config", "", "a YAML file of settings named as these flags")
	return cmd
}

// server is what a role's Start returns.
type server interface {
	Addr() net.Addr
	Err() <-chan error
	Close() error
}

// serve starts a role and runs it until the command's context ends
// (SIGINT, SIGTERM) or the role fails.
func serve(cmd *cobra.Command, role, name, dataDir, spiffeSocket string, start func() (server, error)) error {
	begin := time.Now()
	s, err := start()
	if err != nil {
		return err
	}
	defer s.Close()
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "vwire %s %s ready in %v: listening on %s\n", role, name, time.Since(begin).Round(time.Millisecond), s.Addr())
	if spiffeSocket == "" {
		fmt.Fprintf(out, "admin credentials: %s (vwire get services --registry %s --credentials %[1]s)\n", filepath.Join(dataDir, "admin"), s.Addr())
	}
	select {
	case <-cmd.Context().Done():
		slog.Info("stopping", "role", role, "domain", name)
		return nil
	case err := <-s.Err():
		return fmt.Errorf("%s %s stopped: %w", role, name, err)
	}
}
