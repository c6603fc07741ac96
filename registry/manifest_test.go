package registry

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/registry/registrypb"
)

func reference() *registrypb.NetworkService {
	return &registrypb.NetworkService{
		Name:    "secure-intranet-connectivity",
		Payload: registrypb.Payload_IP,
		Matches: []*registrypb.Match{
			{SourceSelector: map[string]string{"app": "firewall"}, Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"app": "vpn-gateway"}}}},
			{Routes: []*registrypb.Route{{DestinationSelector: map[string]string{"app": "firewall"}}}},
		},
	}
}

func TestDecodeReferenceManifest(t *testing.T) {
	f, err := os.Open("testdata/secure-intranet-connectivity.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objs, err := DecodeManifests(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Services) != 1 || !proto.Equal(objs.Services[0], reference()) {
		t.Errorf("decoded %v\nwant %v", objs.Services, reference())
	}
}

// The current Network Service Mesh spelling, and the introduction's with
// the selectors nested under "match:", mean the same service.
func TestDecodeOtherSpellings(t *testing.T) {
	for name, doc := range map[string]string{
		"nsm api": `
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: secure-intranet-connectivity, namespace: nsm-system}
spec:
  payload: IP
  matches:
    - source_selector: {app: firewall}
      routes:
        - destination_selector: {app: vpn-gateway}
    - routes:
        - destination_selector: {app: firewall}
`,
		"nested": `
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: secure-intranet-connectivity}
spec:
  payload: ip
  matches:
    - match:
        sourceSelector: {app: firewall}
        route:
          - destination:
              destinationSelector: {app: vpn-gateway}
    - match:
        route:
          - destination:
              destinationSelector: {app: firewall}
`,
	} {
		objs, err := DecodeManifests(strings.NewReader(doc))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !proto.Equal(objs.Services[0], reference()) {
			t.Errorf("%s: decoded %v", name, objs.Services[0])
		}
	}
}

func TestDecodeEndpoints(t *testing.T) {
	f, err := os.ReadFile("testdata/endpoints.yaml")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := DecodeManifests(bytes.NewReader(append(f, []byte("\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: leased}\nspec:\n  network_service_names: [svc]\n  expiresIn: 90s\n---\n")...)))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Endpoints) != 3 {
		t.Fatalf("got %d endpoints", len(objs.Endpoints))
	}
	fw := objs.Endpoints[0]
	if fw.GetEndpoint().GetName() != "firewall-1" || fw.GetEndpoint().GetLabels()["app"] != "firewall" || fw.GetExpiresIn() != nil {
		t.Errorf("firewall-1: %v", fw)
	}
	if d := objs.Endpoints[2].GetExpiresIn().AsDuration(); d.Seconds() != 90 {
		t.Errorf("expiresIn %v, want 90s", d)
	}
}

// A bad manifest is refused with the document and the field named.
func TestDecodeErrors(t *testing.T) {
	const head = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: svc}\n"
	const ok = head + "spec: {payload: IP}\n"
	for doc, want := range map[string]string{
		ok + "---\n" + head + "spec: {payload: FOO}\n": `document 2 (NetworkService "svc"): spec.payload: unknown payload "FOO"`,
		head + "spec: {payload: IP, colour: red}\n":    `document 1 (NetworkService "svc"): line 4: spec.colour: unknown field "colour"`,
		"kind: Pod\n": `document 1: unknown kind "Pod"`,
		"apiVersion: v1\nkind: NetworkService\nmetadata: {name: x}\n":                                                                                                                          `apiVersion "v1" is not "networkservicemesh.io/v1"`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: Bad_Name}\nspec: {payload: IP}\n":                                                                        `network service name "Bad_Name"`,
		head + "spec:\n  payload: IP\n  matches:\n    - source_selector: {app: firewall}\n      routes:\n        - destination_selector: {app: x}\n          wieght: 3\n":                      `spec.matches[0].routes[0].wieght: unknown field "wieght"`,
		head + "spec: {name: other, payload: IP}\n":                                                                                                                                            `spec.name "other" differs from metadata.name "svc": an object has one name (write the same in both, or leave spec.name out)`,
		head + "spec: {payload: IP, matches: [{routes: [{destination_selector: {nodeName: \"{{.nodeName\"}}]}]}\n":                                                                             `matches[0].routes[0].destinationSelector: label nodeName: template "{{.nodeName": `,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], expiration_time: 2020-01-01T00:00:00Z}\n":                 `spec.expiration_time 2020-01-01T00:00:00Z has passed: the registration would lapse before it is stored`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], expiration_time: tomorrow}\n":                             `"tomorrow" is not an RFC 3339 time`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], expiresIn: 5m, expiration_time: {seconds: 4102444800}}\n": `spec.expiresIn and spec.expiration_time both say when the registration lapses: give one`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {network_service_names: [s], network_service_labels: {t: {labels: {app: x}}}}\n":       `networkServiceLabels names "t", which is not one of its networkServiceNames [s]`,
		head + "spec: {payload: IP}\n  bad: [\n": "document 1: yaml:",
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {}\n":                                                 `endpoint "e" provides no network service`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {networkServiceNames: [s], expiresIn: soon}\n":        `spec.expiresIn: "soon" is not a duration`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e, labels: {app: \"a b\"}}\nspec: {networkServiceNames: [s]}\n": `labels: label app="a b"`,
		"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {name: e}\nspec: {networkServiceNames: [s@other.example]}\n":           `names another domain`,
		head + "spec: {payload: IP, matches: [{sourceSelector: [a, b]}]}\n":                                                                                   "spec: line 4: cannot unmarshal !!seq into map[string]string",
		"": "no objects",
		head + "spec: {payload: IP, plainVxlan: true}\n": `plainVxlan is for ETHERNET services`,
	} {
		_, err := DecodeManifests(strings.NewReader(doc))
		if err == nil || !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q:\n got %v\nwant %q", doc, err, want)
		}
	}
}

// What `vwire get -o yaml` prints applies again unchanged.
func TestManifestRoundTrip(t *testing.T) {
	eps := []*registrypb.Endpoint{{Name: "fw", NetworkServiceNames: []string{"secure-intranet-connectivity"}, Labels: map[string]string{"app": "firewall"}, Url: "tcp://x", Owner: "spiffe://a/b"}}
	var buf bytes.Buffer
	if err := EncodeManifests(&buf, []*registrypb.NetworkService{reference()}, eps); err != nil {
		t.Fatal(err)
	}
	objs, err := DecodeManifests(&buf)
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	eps[0].Owner = "" // status, not spec
	plain := &registrypb.NetworkService{Name: "l2", Payload: registrypb.Payload_ETHERNET, PlainVxlan: true}
	buf.Reset()
	EncodeManifests(&buf, []*registrypb.NetworkService{plain}, nil)
	text := buf.String()
	if again, err := DecodeManifests(&buf); err != nil || !proto.Equal(again.Services[0], plain) || !strings.Contains(text, "plainVxlan: true") {
		t.Errorf("a plainVxlan service round trip: %v %v", again, err)
	}
	if !proto.Equal(objs.Services[0], reference()) || !proto.Equal(objs.Endpoints[0].GetEndpoint(), eps[0]) {
		t.Errorf("round trip changed the objects: %v", objs)
	}
}

func FuzzDecodeManifests(f *testing.F) {
	for _, p := range []string{"testdata/secure-intranet-connectivity.yaml", "testdata/endpoints.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("kind: NetworkService\n---\n- a\n"))
	f.Add([]byte("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: a}\nspec: {payload: IP, matches: [{match: {match: {}}}]}"))
	f.Add([]byte("&a [*a]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := DecodeManifests(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrManifest) {
				t.Fatalf("error %v does not wrap ErrManifest", err)
			}
			return
		}
		// Whatever is accepted is valid and survives a round trip.
		var eps []*registrypb.Endpoint
		for _, s := range objs.Services {
			if err := ValidateService(s); err != nil {
				t.Fatalf("accepted an invalid service: %v", err)
			}
		}
		for _, e := range objs.Endpoints {
			if err := ValidateEndpoint(e.GetEndpoint()); err != nil {
				t.Fatalf("accepted an invalid endpoint: %v", err)
			}
			eps = append(eps, e.GetEndpoint())
		}
		var buf bytes.Buffer
		if err := EncodeManifests(&buf, objs.Services, eps); err != nil {
			t.Fatal(err)
		}
		again, err := DecodeManifests(&buf)
		if err != nil {
			t.Fatalf("re-decoding our own output: %v\n%s", err, buf.String())
		}
		if len(again.Services) != len(objs.Services) || len(again.Endpoints) != len(objs.Endpoints) {
			t.Fatalf("round trip lost objects")
		}
	})
}
