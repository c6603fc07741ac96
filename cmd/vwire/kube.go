package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/kube"
)

// kubeFlags turn on the Kubernetes side of a domain's proxy: the sync of
// its services with NetworkService objects, and its CA in a Secret.
type kubeFlags struct {
	enabled    bool
	kubeconfig string
	namespace  string
	caSecret   string

	client dynamic.Interface
}

const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func (k *kubeFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&k.enabled, "kubernetes", false, "this domain is a Kubernetes cluster: its NetworkService objects are its services, and its endpoints appear as NetworkServiceEndpoint objects")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with --kubernetes: the cluster's kubeconfig (default: the pod's service account)")
	fs.StringVar(&k.namespace, "kube-namespace", "", "with --kubernetes: vwire's namespace, for its lease and endpoint objects (default: the pod's)")
	fs.StringVar(&k.caSecret, "ca-secret", "", "with --kubernetes: keep the built-in CA in this Secret of --kube-namespace, shared by the domain's proxies (made by the first)")
}

// configure connects to the cluster, makes the domain's registry leave
// services to the objects and puts the CA kept in the Secret in the data
// directory.
func (k *kubeFlags) configure(ctx context.Context, cfg *domain.Config) error {
	if !k.enabled {
		if k.kubeconfig != "" || k.namespace != "" || k.caSecret != "" {
			return usagef("--kubeconfig, --kube-namespace and --ca-secret go with --kubernetes")
		}
		return nil
	}
	if k.caSecret != "" && cfg.SpiffeSocket != "" {
		return usagef("--ca-secret keeps the built-in CA; with --spiffe-socket SPIRE issues the SVIDs")
	}
	var rc *rest.Config
	var err error
	if k.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", k.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("--kubernetes: %w (outside a pod, give --kubeconfig)", err)
	}
	if k.namespace == "" {
		b, err := os.ReadFile(inClusterNamespace)
		if err != nil {
			return fmt.Errorf("--kube-namespace: not given, and not in a pod (%v)", err)
		}
		k.namespace = strings.TrimSpace(string(b))
	}
	if k.client, err = dynamic.NewForConfig(rc); err != nil {
		return fmt.Errorf("--kubernetes: %w", err)
	}
	cfg.ServicesElsewhere = "its Kubernetes NetworkService objects (kubectl apply -f FILE)"
	if k.caSecret == "" {
		return nil
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	td, err := cfg.SPIFFETrustDomain()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	return kube.LoadCA(ctx, k.client, k.namespace, k.caSecret, filepath.Join(cfg.DataDir, "ca"), td)
}

// start runs the sync for domain d until ctx ends.
func (k *kubeFlags) start(ctx context.Context, d *domain.Domain, log *slog.Logger) {
	if !k.enabled {
		return
	}
	host, _ := os.Hostname()
	s := &kube.Sync{Client: k.client, Store: d.Store, Namespace: k.namespace, Identity: fmt.Sprintf("%s-%d", host, os.Getpid()), Log: log.With("kubernetes", k.namespace)}
	go s.Run(ctx)
}
