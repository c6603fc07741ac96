package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/vwire/vwire/federation"
)

var webhookConfigsResource = schema.GroupVersionResource{Group: "admissionregistration.k8s.io", Version: "v1", Resource: "mutatingwebhookconfigurations"}

// webhookCertLifetime is the serving certificate's; it is renewed at half.
const webhookCertLifetime = 24 * time.Hour

// Webhook serves the Injector over TLS with a certificate of the domain's
// CA for Host (the webhook Service's name in cluster DNS), and keeps the
// CA's roots in the caBundle of the MutatingWebhookConfiguration
// Configuration, which the API server verifies the webhook with.
type Webhook struct {
	Client        dynamic.Interface
	CA            *federation.CA
	Host          string
	Configuration string
	Injector      *Injector
	Log           *slog.Logger

	mu   sync.Mutex
	cert *tls.Certificate
}

// Serve serves on lis until ctx ends.
func (w *Webhook) Serve(ctx context.Context, lis net.Listener) error {
	if _, err := w.certificate(nil); err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           w.Injector,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: w.certificate},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(w.Log.Handler(), slog.LevelDebug),
	}
	go func() { <-ctx.Done(); srv.Close() }()
	if w.Configuration != "" {
		go w.keepCABundle(ctx)
	}
	err := srv.Serve(tls.NewListener(lis, srv.TLSConfig))
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// certificate is the serving certificate, signed again when half its life
// has passed.
func (w *Webhook) certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cert != nil && time.Until(w.cert.Leaf.NotAfter) > webhookCertLifetime/2 {
		return w.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf, err := w.CA.SignServer([]string{w.Host}, key.Public(), webhookCertLifetime)
	if err != nil {
		return nil, err
	}
	w.cert = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	return w.cert, nil
}

// keepCABundle writes the CA's roots into every webhook of the
// configuration, again when they change (a rotation), until ctx ends.
func (w *Webhook) keepCABundle(ctx context.Context) {
	configs := w.Client.Resource(webhookConfigsResource)
	followRoots(ctx, w.CA, w.Log.With("configuration", w.Configuration), "writing the webhook's CA bundle", func(roots []byte) error {
		return setCABundle(ctx, configs, w.Configuration, base64.StdEncoding.EncodeToString(roots))
	}, func() {
		w.mu.Lock()
		w.cert = nil // signed by the new root from now on
		w.mu.Unlock()
	})
}

func setCABundle(ctx context.Context, configs dynamic.NamespaceableResourceInterface, name, bundle string) error {
	cfg, err := configs.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	hooks, _, _ := unstructured.NestedSlice(cfg.Object, "webhooks")
	if len(hooks) == 0 {
		return fmt.Errorf("MutatingWebhookConfiguration %s has no webhooks", name)
	}
	changed := false
	for i := range hooks {
		h, ok := hooks[i].(map[string]any)
		if !ok {
			continue
		}
		if have, _, _ := unstructured.NestedString(h, "clientConfig", "caBundle"); have != bundle {
			unstructured.SetNestedField(h, bundle, "clientConfig", "caBundle")
			changed = true
		}
	}
	if !changed {
		return nil
	}
	unstructured.SetNestedSlice(cfg.Object, hooks, "webhooks")
	_, err = configs.Update(ctx, cfg, metav1.UpdateOptions{})
	return err
}
