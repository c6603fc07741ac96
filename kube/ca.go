package kube

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/internal/atomicfile"
)

var secretsResource = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}

// caFiles are the files of a built-in CA's directory that its Secret keeps.
var caFiles = []string{"ca.pem", "ca.key", "next.pem", "next.key", "bundle.pem", "rotation.json"}

// LoadCA makes dir hold the domain's built-in CA kept in the Secret name of
// namespace ns, so that every replica of the domain's proxy issues from the
// same CA: the Secret's CA if it exists, else a new one, stored in the
// Secret (the first replica to store it wins; the others take its).
func LoadCA(ctx context.Context, client dynamic.Interface, ns, name, dir string, td spiffeid.TrustDomain) error {
	secrets := client.Resource(secretsResource).Namespace(ns)
	for range 3 {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			return writeCA(s, dir, td)
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("the CA's Secret %s/%s: %w", ns, name, err)
		}
		// A new CA, in a directory of its own until it is stored.
		tmp, err := os.MkdirTemp(filepath.Dir(dir), ".ca-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if _, err := federation.OpenCA(tmp, td); err != nil {
			return err
		}
		data := map[string]any{}
		for _, f := range caFiles {
			b, err := os.ReadFile(filepath.Join(tmp, f))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return err
			}
			data[f] = base64.StdEncoding.EncodeToString(b)
		}
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Secret", "type": "Opaque"}}
		obj.SetName(name)
		obj.SetLabels(map[string]string{managedByLabel: ManagedBy})
		obj.Object["data"] = data
		if _, err := secrets.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("storing the new CA in Secret %s/%s: %w", ns, name, err)
		}
		// Stored, or another replica stored its own first: read it back.
	}
	return fmt.Errorf("the CA's Secret %s/%s: neither found nor made", ns, name)
}

// writeCA writes the CA a Secret holds into dir, after checking that it is
// a CA of td (a Secret of another domain's release is refused).
func writeCA(s *unstructured.Unstructured, dir string, td spiffeid.TrustDomain) error {
	data, _, _ := unstructured.NestedStringMap(s.Object, "data")
	if data["ca.pem"] == "" || data["ca.key"] == "" {
		return fmt.Errorf("the Secret %s/%s holds no CA (ca.pem and ca.key)", s.GetNamespace(), s.GetName())
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range caFiles {
		path := filepath.Join(dir, f)
		if data[f] == "" {
			os.Remove(path)
			continue
		}
		b, err := base64.StdEncoding.DecodeString(data[f])
		if err != nil {
			return fmt.Errorf("the CA's Secret %s/%s: %s: %w", s.GetNamespace(), s.GetName(), f, err)
		}
		if err := atomicfile.Write(path, b, 0o600); err != nil {
			return err
		}
	}
	if _, err := federation.OpenCA(dir, td); err != nil {
		return fmt.Errorf("the CA's Secret %s/%s: %w", s.GetNamespace(), s.GetName(), err)
	}
	return nil
}

var configMapsResource = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// PublishBundle keeps the CA's bundle (bundle.pem) in the ConfigMap name of
// namespace ns, for the gateways to verify the proxies with before they
// have SVIDs of their own, until ctx ends: every replica writes the same,
// and writes again when the CA's bundle changes (a rotation).
func PublishBundle(ctx context.Context, client dynamic.Interface, ns, name string, ca *federation.CA, log *slog.Logger) {
	maps := client.Resource(configMapsResource).Namespace(ns)
	followRoots(ctx, ca, log.With("configmap", ns+"/"+name), "publishing the domain's bundle", func(roots []byte) error {
		return putConfigMap(ctx, maps, name, map[string]any{"bundle.pem": string(roots)})
	}, nil)
}

// followRoots writes the CA's roots (PEM) with write, and again each time
// they change (onChange, if set, is told first), until ctx ends; a write
// that fails is tried again, backing off to 30 s.
func followRoots(ctx context.Context, ca *federation.CA, log *slog.Logger, what string, write func(roots []byte) error, onChange func()) {
	for wait := time.Second; ; {
		changed := ca.Changed()
		roots, err := ca.Bundle().Marshal()
		if err == nil {
			err = write(roots)
		}
		if err == nil {
			wait = time.Second
			select {
			case <-ctx.Done():
				return
			case <-changed:
				if onChange != nil {
					onChange()
				}
				continue
			}
		}
		log.Error(what+" failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// putConfigMap makes the ConfigMap name hold data, if it does not already.
func putConfigMap(ctx context.Context, maps dynamic.ResourceInterface, name string, data map[string]any) error {
	cur, err := maps.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap", "data": data}}
		obj.SetName(name)
		obj.SetLabels(map[string]string{managedByLabel: ManagedBy})
		_, err = maps.Create(ctx, obj, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	if have, _, _ := unstructured.NestedMap(cur.Object, "data"); equality.Semantic.DeepEqual(have, data) {
		return nil
	}
	cur.Object["data"] = data
	_, err = maps.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}
