package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// loadSettings fills every flag the user did not give on the command line
// from VWIRE_<FLAG>, then from the --config file (a YAML mapping of flag
// names to values), so that one Config gets all three sources with the
// command line first.
func loadSettings(cmd *cobra.Command) error {
	file, err := readConfigFile(cmd)
	if err != nil {
		return err
	}
	var errs []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || f.Name == "help" || f.Annotations[notFromEnv] != nil {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if err := setFlag(f, v); err != nil {
				errs = append(errs, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := setFlag(f, v); err != nil {
				errs = append(errs, fmt.Sprintf("config file: %s: %v", f.Name, err))
			}
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func setFlag(f *pflag.Flag, v string) error {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		var items []string
		if v != "" {
			items = strings.Split(v, ",")
		}
		return sv.Replace(items)
	}
	return f.Value.Set(v)
}

// readConfigFile reads --config, if the command has it and it is set (by
// flag or VWIRE_CONFIG), into flag name → value. A key that names no flag of
// the command is an error, not silently ignored.
func readConfigFile(cmd *cobra.Command) (map[string]string, error) {
	f := cmd.Flags().Lookup("config")
	if f == nil {
		return nil, nil
	}
	path := f.Value.String()
	if !f.Changed {
		path = os.Getenv(envName("config"))
	}
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	out := map[string]string{}
	var unknown []string
	for k, v := range raw {
		if cmd.Flags().Lookup(k) == nil || k == "config" {
			unknown = append(unknown, k)
			continue
		}
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case nil:
			out[k] = ""
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("--config %s: unknown setting(s) %s (settings are named as the flags of `vwire %s`)",
			path, strings.Join(unknown, ", "), cmd.Name())
	}
	return out, nil
}

// notFromEnv marks flags that describe something other than this process
// (a peer's trust domain): the environment of a domain's container, where
// an admin runs the CLI, sets VWIRE_TRUST_DOMAIN to the domain's own.
const notFromEnv = "vwire.io/not-from-env"

// peerFlags keeps the environment off the named flags of fs.
func peerFlags(fs *pflag.FlagSet, names ...string) {
	for _, n := range names {
		fs.SetAnnotation(n, notFromEnv, []string{"true"})
	}
}
