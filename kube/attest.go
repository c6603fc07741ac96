package kube

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/vwire/vwire/federation"
)

// A node's gateway in a Kubernetes domain with the built-in CA gets its
// SVID (spiffe://TD/vwire/gateway/NODE) from the domain's proxy for a
// token of the gateway's service account, as SPIRE's k8s_psat attestor
// does: the proxy asks the API server who the token is (TokenReview) and
// which node its pod runs on, and signs the gateway's key for that node
// only. The call is HTTPS with the proxy's SVID; the gateway verifies it
// against the domain's bundle (published in a ConfigMap) and holds no
// credential of its own until the proxy answers.

// AttestPath is where the proxy takes a gateway's attestation.
const AttestPath = "/v1/gateway-svid"

// AttestAudience is the audience of the tokens it accepts: a token made
// for another audience (the API server's own) is refused.
const AttestAudience = "vwire"

// maxAttestRequest bounds an attestation's body: a token and a CSR.
const maxAttestRequest = 32 << 10

var tokenReviewsResource = schema.GroupVersionResource{Group: "authentication.k8s.io", Version: "v1", Resource: "tokenreviews"}

// attestRequest is what a gateway sends: its service account token and a
// certificate request for the key it keeps.
type attestRequest struct {
	Token string `json:"token"`
	CSR   []byte `json:"csr"` // DER
}

// attestResponse is the SVID and the domain's bundle, PEM.
type attestResponse struct {
	SVID   string `json:"svid"`
	Bundle string `json:"bundle"`
}

// Attestor is the proxy's side: an http.Handler.
type Attestor struct {
	Client dynamic.Interface
	CA     *federation.CA
	// ServiceAccount is the gateways' one, "NAMESPACE/NAME": tokens of any
	// other are refused.
	ServiceAccount string
	// TTL is the SVIDs' lifetime (default 1h); gateways renew at half.
	TTL time.Duration
	Log *slog.Logger
}

func (a *Attestor) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != AttestPath || r.Method != http.MethodPost {
		http.Error(w, "POST "+AttestPath+" only", http.StatusNotFound)
		return
	}
	var req attestRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAttestRequest)).Decode(&req); err != nil {
		http.Error(w, fmt.Sprintf("not an attestation (JSON of token and csr, at most %d bytes): %v", maxAttestRequest, err), http.StatusBadRequest)
		return
	}
	svid, node, err := a.attest(r.Context(), req)
	var refused refusal
	switch {
	case errors.As(err, &refused):
		a.Log.Warn("a gateway's attestation is refused", "from", r.RemoteAddr, "reason", err)
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	case err != nil:
		a.Log.Error("a gateway's attestation failed", "from", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	a.Log.Info("gateway SVID issued", "node", node, "id", svid.URIs[0].String(), "expires", svid.NotAfter.Format(time.RFC3339))
	bundle, err := a.CA.Bundle().Marshal()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(attestResponse{
		SVID:   string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: svid.Raw})),
		Bundle: string(bundle),
	})
}

// refusal is an attestation refused for what it holds (not for a failure
// to check it).
type refusal struct{ error }

func refusef(format string, args ...any) error { return refusal{fmt.Errorf(format, args...)} }

// attest checks req and signs its key for the node of the token's pod.
func (a *Attestor) attest(ctx context.Context, req attestRequest) (*x509.Certificate, string, error) {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, "", refusef("the certificate request does not parse: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", refusef("the certificate request is not signed by its key: %v", err)
	}
	if req.Token == "" {
		return nil, "", refusef("no service account token")
	}
	review := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
		"spec": map[string]any{"token": req.Token, "audiences": []any{AttestAudience}},
	}}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	got, err := a.Client.Resource(tokenReviewsResource).Create(ctx, review, metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("asking the API server about the token (TokenReview): %w", err)
	}
	if ok, _, _ := unstructured.NestedBool(got.Object, "status", "authenticated"); !ok {
		why, _, _ := unstructured.NestedString(got.Object, "status", "error")
		return nil, "", refusef("the API server does not accept the token for audience %q: %s", AttestAudience, why)
	}
	user, _, _ := unstructured.NestedString(got.Object, "status", "user", "username")
	ns, name, _ := strings.Cut(a.ServiceAccount, "/")
	if want := "system:serviceaccount:" + ns + ":" + name; user != want {
		return nil, "", refusef("the token is %s's, not the gateways' service account (%s)", user, want)
	}
	nodes, _, _ := unstructured.NestedStringSlice(got.Object, "status", "user", "extra", "authentication.kubernetes.io/node-name")
	pods, _, _ := unstructured.NestedStringSlice(got.Object, "status", "user", "extra", "authentication.kubernetes.io/pod-name")
	if len(nodes) != 1 || nodes[0] == "" || len(pods) != 1 {
		return nil, "", refusef("the token is bound to no pod on a node (a projected service account token of the gateway's pod is; Kubernetes 1.30 or later)")
	}
	id, err := federation.GatewayID(a.CA.TrustDomain(), nodes[0])
	if err != nil {
		return nil, "", refusef("%v", err)
	}
	ttl := a.TTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	cert, err := a.CA.Sign(id, csr.PublicKey, ttl)
	return cert, nodes[0], err
}

// AttestSource is the gateway's side: a federation.Source whose SVID the
// domain's proxy at URL signs for the service account token in TokenFile
// (read again for every request: the kubelet renews it), renewed at half
// its lifetime. Its bundles start as the ConfigMap's and follow the
// proxy's answers.
type AttestSource struct {
	*federation.Trust
	federation.Renewed
	url, tokenFile string
	client         *http.Client
	log            *slog.Logger
}

// NewAttestSource attests at url (https://HOST:PORT) until it has an SVID
// or ctx ends; bundleFile is the domain's bundle (PEM), which the proxy's
// certificate must chain to.
func NewAttestSource(ctx context.Context, url, tokenFile, bundleFile string, td spiffeid.TrustDomain, log *slog.Logger) (*AttestSource, error) {
	bundle, err := x509bundle.Load(td, bundleFile)
	if err != nil {
		return nil, fmt.Errorf("the domain's bundle: %w", err)
	}
	s := &AttestSource{Trust: federation.NewTrust(bundle), url: strings.TrimSuffix(url, "/") + AttestPath, tokenFile: tokenFile, log: log}
	s.client = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.TLSClientConfig(s.Trust, tlsconfig.AuthorizeID(federation.ProxyID(td))),
	}}
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		err := s.renew(ctx)
		if err == nil {
			break
		}
		var refused refusal
		if errors.As(err, &refused) {
			return nil, err
		}
		log.Warn("attesting to the domain's proxy failed; retrying", "url", url, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("attesting to %s: %w", url, err)
		case <-time.After(wait):
		}
	}
	s.Go(s.run)
	return s, nil
}

// renew asks for an SVID for a new key.
func (s *AttestSource) renew(ctx context.Context) error {
	token, err := os.ReadFile(s.tokenFile)
	if err != nil {
		return refusef("the service account token: %v", err)
	}
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	body, _ := json.Marshal(attestRequest{Token: strings.TrimSpace(string(token)), CSR: csr})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return refusef("%v", err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	switch {
	case resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest:
		return refusef("the proxy refused the attestation: %s", strings.TrimSpace(string(b)))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("the proxy answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	var out attestResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return fmt.Errorf("the proxy's answer: %w", err)
	}
	certs, err := parseCerts(out.SVID)
	if err != nil {
		return fmt.Errorf("the proxy's SVID: %w", err)
	}
	svid := &x509svid.SVID{Certificates: certs, PrivateKey: key}
	if svid.ID, err = x509svid.IDFromCert(certs[0]); err != nil {
		return fmt.Errorf("the proxy's SVID: %w", err)
	}
	td := svid.ID.TrustDomain()
	bundle, err := x509bundle.Parse(td, []byte(out.Bundle))
	if err != nil {
		return fmt.Errorf("the proxy's bundle: %w", err)
	}
	if _, _, err := x509svid.Verify(certs, bundle); err != nil {
		return fmt.Errorf("the proxy's SVID does not verify with its bundle: %w", err)
	}
	s.Trust.Set(bundle)
	s.SetSVID(svid)
	return nil
}

func (s *AttestSource) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-time.After(s.HalfLife(time.Second)):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.renew(ctx); err != nil {
			s.log.Error("renewing the gateway's SVID failed; retrying", "url", s.url, "err", err)
		}
		cancel()
	}
}

func parseCerts(p string) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := []byte(p)
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// newCSR makes a key and a certificate request for it.
func newCSR() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return key, csr, err
}
