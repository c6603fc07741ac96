package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/kube"
)

// kubeFlags turn on the Kubernetes side of a domain's proxy: the sync of
// its services with NetworkService objects, and its CA in a Secret.
type kubeFlags struct {
	enabled    bool
	kubeconfig string
	namespace  string
	caSecret   string
	// The gateways' attestation (with the built-in CA).
	attestListen   string
	gatewayAccount string
	// The admission webhook that gives annotated pods their sidecars.
	webhookListen, webhookHost, webhookConfig string
	webhookCASecret                           string
	sidecarImage, sidecarPull, socketDir      string
	sidecarOTLP                               string
	sidecarTimeout                            time.Duration

	client dynamic.Interface
	// webhookCA signs the webhook's certificate when the domain has no
	// built-in CA (SVIDs from SPIRE).
	webhookCA *federation.CA
}

const inClusterNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func (k *kubeFlags) add(fs *pflag.FlagSet) {
	fs.BoolVar(&k.enabled, "kubernetes", false, "this domain is a Kubernetes cluster: its NetworkService objects are its services, and its endpoints appear as NetworkServiceEndpoint objects")
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "with --kubernetes: the cluster's kubeconfig (default: the pod's service account)")
	fs.StringVar(&k.namespace, "kube-namespace", "", "with --kubernetes: vwire's namespace, for its lease and endpoint objects (default: the pod's)")
	fs.StringVar(&k.caSecret, "ca-secret", "", "with --kubernetes: keep the built-in CA in this Secret of --kube-namespace, shared by the domain's proxies (made by the first), and its bundle in the ConfigMap of the same name")
	fs.StringVar(&k.attestListen, "attest-listen", "", "with --ca-secret: sign node gateways' SVIDs here (HTTPS) for their pods' service account tokens")
	fs.StringVar(&k.gatewayAccount, "gateway-service-account", "", "with --attest-listen: the gateways' service account, NAMESPACE/NAME")
	fs.StringVar(&k.webhookListen, "webhook-listen", "", "with --ca-secret or --webhook-ca-secret: serve the admission webhook that adds vWire sidecars to annotated pods here (HTTPS)")
	fs.StringVar(&k.webhookCASecret, "webhook-ca-secret", "", "with --webhook-listen and --spiffe-socket (no built-in CA): keep the CA of the webhook's certificate in this Secret of --kube-namespace (made by the first proxy)")
	fs.StringVar(&k.webhookHost, "webhook-host", "", "with --webhook-listen: the webhook's name in the API server's calls (SERVICE.NAMESPACE.svc), in its certificate")
	fs.StringVar(&k.webhookConfig, "webhook-configuration", "", "with --webhook-listen: the MutatingWebhookConfiguration whose caBundle the proxies keep")
	fs.StringVar(&k.sidecarImage, "sidecar-image", "", "with --webhook-listen: the image the sidecars run (vwire's)")
	fs.StringVar(&k.sidecarPull, "sidecar-pull-policy", "IfNotPresent", "with --webhook-listen: the sidecars' imagePullPolicy")
	fs.StringVar(&k.socketDir, "gateway-socket-dir", "/run/vwire", "with --webhook-listen: the host directory of the node gateways' socket (gateway.sock)")
	fs.StringVar(&k.sidecarOTLP, "sidecar-otlp-endpoint", "", "with --webhook-listen: where the sidecars send their traces (OTLP/gRPC, as --otlp-endpoint; default: none)")
	fs.DurationVar(&k.sidecarTimeout, "sidecar-startup-timeout", 2*time.Minute, "with --webhook-listen: how long a pod's app waits for its vWires before the pod reports the failure")
}

// configure connects to the cluster, makes the domain's registry leave
// services to the objects and puts the CA kept in the Secret in the data
// directory.
func (k *kubeFlags) configure(ctx context.Context, cfg *domain.Config) error {
	if !k.enabled {
		if k.kubeconfig != "" || k.namespace != "" || k.caSecret != "" || k.attestListen != "" || k.webhookListen != "" || k.webhookCASecret != "" {
			return usagef("--kubeconfig, --kube-namespace, --ca-secret, --attest-listen, --webhook-listen and --webhook-ca-secret go with --kubernetes")
		}
		return nil
	}
	if k.caSecret != "" && cfg.SpiffeSocket != "" {
		return usagef("--ca-secret keeps the built-in CA; with --spiffe-socket SPIRE issues the SVIDs")
	}
	if k.webhookListen != "" {
		switch {
		case k.caSecret == "" && k.webhookCASecret == "":
			return usagef("--webhook-listen needs --ca-secret (the built-in CA signs the webhook's certificate) or, with --spiffe-socket, --webhook-ca-secret (a CA of the webhook's own)")
		case k.webhookCASecret != "" && (k.caSecret != "" || cfg.SpiffeSocket == ""):
			return usagef("--webhook-ca-secret is for a domain whose SVIDs come from SPIRE (--spiffe-socket); otherwise the built-in CA (--ca-secret) signs the webhook's certificate")
		case k.webhookHost == "" || k.sidecarImage == "":
			return usagef("--webhook-listen needs --webhook-host (SERVICE.NAMESPACE.svc) and --sidecar-image")
		case k.sidecarTimeout < time.Second:
			return usagef("--sidecar-startup-timeout %v: at least 1s", k.sidecarTimeout)
		}
		if k.sidecarOTLP != "" {
			if err := tracing.CheckEndpoint("--sidecar-otlp-endpoint", k.sidecarOTLP); err != nil {
				return usagef("%v", err)
			}
		}
	}
	if k.attestListen != "" {
		if k.caSecret == "" {
			return usagef("--attest-listen needs --ca-secret: the gateways' SVIDs come from the built-in CA (with SPIRE, its agents attest them)")
		}
		if ns, name, ok := strings.Cut(k.gatewayAccount, "/"); !ok || ns == "" || name == "" {
			return usagef("--attest-listen needs --gateway-service-account NAMESPACE/NAME: only its tokens get gateway SVIDs")
		}
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
	if td, err := cfg.SPIFFETrustDomain(); err == nil {
		cfg.ObserveRequests = kube.NewPodEvents(k.client, td, cfg.Log().With("kubernetes", k.namespace)).Observe
	}
	if k.caSecret == "" && k.webhookCASecret == "" {
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
	if k.webhookCASecret != "" {
		dir := filepath.Join(cfg.DataDir, "webhook-ca")
		if err := kube.LoadCA(ctx, k.client, k.namespace, k.webhookCASecret, dir, td); err != nil {
			return fmt.Errorf("--webhook-ca-secret: %w", err)
		}
		k.webhookCA, err = federation.OpenCA(dir, td)
		return err
	}
	return kube.LoadCA(ctx, k.client, k.namespace, k.caSecret, filepath.Join(cfg.DataDir, "ca"), td)
}

// start runs the sync for domain d, the publishing of its bundle and the
// gateways' attestation until ctx ends.
func (k *kubeFlags) start(ctx context.Context, d *domain.Domain, log *slog.Logger) error {
	if !k.enabled {
		return nil
	}
	log = log.With("kubernetes", k.namespace)
	if k.attestListen != "" {
		lis, err := net.Listen("tcp", k.attestListen)
		if err != nil {
			return fmt.Errorf("--attest-listen: %w", err)
		}
		srv := &http.Server{
			Handler:           &kube.Attestor{Client: k.client, CA: d.Identity.CA, ServiceAccount: k.gatewayAccount, Log: log},
			TLSConfig:         tlsconfig.TLSServerConfig(d.Identity),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		go srv.Serve(tls.NewListener(lis, srv.TLSConfig))
		go func() { <-ctx.Done(); srv.Close() }()
	}
	if k.webhookListen != "" {
		lis, err := net.Listen("tcp", k.webhookListen)
		if err != nil {
			return fmt.Errorf("--webhook-listen: %w", err)
		}
		ca := d.Identity.CA
		if ca == nil {
			ca = k.webhookCA
		}
		w := &kube.Webhook{Client: k.client, CA: ca, Host: k.webhookHost, Configuration: k.webhookConfig, Log: log,
			Injector: &kube.Injector{Image: k.sidecarImage, PullPolicy: k.sidecarPull, SocketDir: k.socketDir, StartupTimeout: k.sidecarTimeout, OTLPEndpoint: k.sidecarOTLP, Log: log}}
		go func() {
			if err := w.Serve(ctx, lis); err != nil {
				log.Error("the admission webhook stopped", "err", err)
			}
		}()
	}
	if k.caSecret != "" {
		go kube.PublishBundle(ctx, k.client, k.namespace, k.caSecret, d.Identity.CA, log)
	}
	host, _ := os.Hostname()
	s := &kube.Sync{Client: k.client, Store: d.Store, Namespace: k.namespace, Identity: fmt.Sprintf("%s-%d", host, os.Getpid()), Log: log}
	go s.Run(ctx)
	return nil
}

// attestFlags get a gateway's SVID in a Kubernetes domain with the
// built-in CA: the domain's proxy signs it for the pod's service account
// token.
type attestFlags struct {
	url, token, bundle, trustDomain string
}

func (a *attestFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&a.url, "attest", "", "in Kubernetes with the built-in CA: get the SVID from the domain's proxy here (https://HOST:PORT, its --attest-listen) for the pod's service account token")
	fs.StringVar(&a.token, "kube-token", "/var/run/secrets/vwire/token", "with --attest: the pod's projected service account token (audience "+kube.AttestAudience+")")
	fs.StringVar(&a.bundle, "trust-bundle", "/etc/vwire/bundle/bundle.pem", "with --attest: the domain's bundle (PEM), which the proxy's certificate must chain to")
	fs.StringVar(&a.trustDomain, "trust-domain", "", "with --attest: the domain's trust domain (required)")
}

func (a *attestFlags) open(ctx context.Context, log *slog.Logger) (federation.Source, error) {
	if a.trustDomain == "" {
		return nil, usagef("--attest needs --trust-domain: the domain whose proxy signs the gateway's SVID")
	}
	td, err := spiffeid.TrustDomainFromString(a.trustDomain)
	if err != nil {
		return nil, usagef("--trust-domain %q: %v", a.trustDomain, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return kube.NewAttestSource(ctx, a.url, a.token, a.bundle, td, log)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
