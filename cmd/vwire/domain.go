package main

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vwire/vwire/registry"
)

func newDomainCmd() *cobra.Command {
	cfg := registry.NewConfig()
	cmd := &cobra.Command{
		Use:   "domain --name DOMAIN [--data-dir DIR] [--listen ADDR]",
		Short: "Run every role of one domain in one process (embedded etcd, registry, built-in CA)",
		Long: `Run every role of one domain in one process: an embedded etcd, the registry
and the built-in development CA (unless --spiffe-socket names a SPIRE agent).
The CA writes admin credentials for the command-line client to DIR/admin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serve(cmd, cfg, "domain") },
	}
	cfg.AddFlags(cmd.Flags())
	cmd.Flags().String("config", "", "a YAML file of settings named as these flags")
	return cmd
}

func newRegistryCmd() *cobra.Command {
	cfg := registry.NewConfig()
	cmd := &cobra.Command{
		Use:   "registry --name DOMAIN [--etcd-endpoints URL,...]",
		Short: "Run a domain's registry alone (embedded etcd, or an external cluster)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return serve(cmd, cfg, "registry") },
	}
	cfg.AddFlags(cmd.Flags())
	cmd.Flags().String("config", "", "a YAML file of settings named as these flags")
	return cmd
}

// serve runs the registry until the command's context ends (SIGINT,
// SIGTERM) or the registry fails.
func serve(cmd *cobra.Command, cfg *registry.Config, role string) error {
	start := time.Now()
	cfg.Logger = slog.Default().With("role", role)
	if err := cfg.Validate(); err != nil {
		return err
	}
	reg, err := registry.Start(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	defer reg.Close()
	fmt.Fprintf(cmd.OutOrStdout(), "vwire %s %s ready in %v: listening on %s\n", role, cfg.Name, time.Since(start).Round(time.Millisecond), reg.Addr())
	if cfg.SpiffeSocket == "" {
		fmt.Fprintf(cmd.OutOrStdout(), "admin credentials: %s (vwire get services --registry %s --credentials %[1]s)\n",
			filepath.Join(cfg.DataDir, "admin"), reg.Addr())
	}
	select {
	case <-cmd.Context().Done():
		slog.Info("stopping", "role", role, "domain", cfg.Name)
		return nil
	case err := <-reg.Err():
		return fmt.Errorf("%s %s stopped: %w", role, cfg.Name, err)
	}
}
