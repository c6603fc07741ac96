package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/kube"
)

// kubeFlags turn on the Kubernetes sync of a domain's proxy.
type kubeFlags struct {
	enabled    bool
	kubeconfig string
	namespace  string
}

const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func (k *kubeFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&k.enabled, "kubernetes", false, "this domain is a Kubernetes cluster: its NetworkService objects are its services, and its endpoints appear as NetworkServiceEndpoint objects")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with --kubernetes: the cluster's kubeconfig (default: the pod's service account)")
	fs.StringVar(&k.namespace, "kube-namespace", "", "with --kubernetes: vwire's namespace, for its lease and endpoint objects (default: the pod's)")
}

// configure makes the domain's registry leave services to the objects.
func (k *kubeFlags) configure(cfg *domain.Config) error {
	if !k.enabled {
		if k.kubeconfig != "" || k.namespace != "" {
			return usagef("--kubeconfig and --kube-namespace go with --kubernetes")
		}
		return nil
	}
	cfg.ServicesElsewhere = "its Kubernetes NetworkService objects (kubectl apply -f FILE)"
	return nil
}

// start runs the sync for domain d until ctx ends.
func (k *kubeFlags) start(ctx context.Context, d *domain.Domain, log *slog.Logger) error {
	if !k.enabled {
		return nil
	}
	var cfg *rest.Config
	var err error
	if k.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("--kubernetes: %w (outside a pod, give --kubeconfig)", err)
	}
	ns := k.namespace
	if ns == "" {
		b, err := os.ReadFile(inClusterNamespace)
		if err != nil {
			return fmt.Errorf("--kube-namespace: not given, and not in a pod (%v)", err)
		}
		ns = strings.TrimSpace(string(b))
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("--kubernetes: %w", err)
	}
	host, _ := os.Hostname()
	s := &kube.Sync{Client: dyn, Store: d.Store, Namespace: ns, Identity: fmt.Sprintf("%s-%d", host, os.Getpid()), Log: log.With("kubernetes", ns)}
	go s.Run(ctx)
	return nil
}
