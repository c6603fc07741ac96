// Command vwire is the one binary of vwire: a subcommand per role (domain,
// registry) and kubectl-like client commands (apply, get, delete). It turns
// flags, VWIRE_<FLAG> environment variables and an optional YAML file into
// each role's Config and starts it; everything else lives in the packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/internal/tracing"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", describe(err))
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:   "vwire",
		Short: "vwire connects workloads across domains by name: service@domain",
		Long: `vwire is an interdomain network service mesh. Each domain runs a registry
(on etcd) and a proxy; workloads ask for service@domain and get an encrypted
point-to-point link to an endpoint of that service.

Every flag can also be set as an environment variable VWIRE_<FLAG>
(--data-dir is VWIRE_DATA_DIR) or, for the server roles, in the YAML file
given with --config. A flag on the command line wins over the environment,
which wins over the file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := loadSettings(cmd); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			// A record logged with a request's context names its trace.
			slog.SetDefault(slog.New(tracing.LogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	root.AddCommand(newDomainCmd(), newProxyCmd(), newRegistryCmd(), newApplyCmd(), newGetCmd(), newDeleteCmd(), newFederationCmd(), newCACmd(), newCloseCmd(), newEndpointCmd(), newConnectCmd(), newDemoCmd(), newGatewayCmd(), newReadyCmd(), newDiagnoseCmd(), newStatusCmd(), newDescribeCmd())
	return root
}

// describe turns a gRPC status into the server's message with its code, the
// way a user wants to read it.
func describe(err error) string {
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return err.Error()
}

// errUsage marks errors in how a command was called.
var errUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, args...))
}

func envName(flag string) string {
	return "VWIRE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
