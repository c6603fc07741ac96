package kube_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/kube"
)

func TestParseRequests(t *testing.T) {
	for _, c := range []struct {
		annotations map[string]string
		want        []kube.Request
		err         string
	}{
		{map[string]string{kube.AnnotationConnect: "marshas-app-connectivity@dc.marsha.example"},
			[]kube.Request{{Service: "marshas-app-connectivity@dc.marsha.example", Interface: "nsm0"}}, ""},
		{map[string]string{kube.AnnotationConnect: "a@x.example/wire1?app=web&tier=front, b"},
			[]kube.Request{{Service: "a@x.example", Interface: "wire1", Labels: map[string]string{"app": "web", "tier": "front"}}, {Service: "b", Interface: "nsm0"}}, ""},
		// NSM's own spelling, and interfaces named around the ones given.
		{map[string]string{kube.AnnotationNSM: "kernel://svc@b.example/nsm0?app=x,kernel://other"},
			[]kube.Request{{Service: "svc@b.example", Interface: "nsm0", Labels: map[string]string{"app": "x"}}, {Service: "other", Interface: "nsm1"}}, ""},
		{map[string]string{kube.AnnotationNSM: "memif://svc/nsm-1"}, nil, "mechanism memif: vwire gives kernel interfaces only"},
		{map[string]string{kube.AnnotationConnect: "svc/an-interface-name-too-long"}, nil, `interface "an-interface-name-too-long": a Linux interface name is 1 to 15`},
		{map[string]string{kube.AnnotationConnect: "Bad_Service@x.example"}, nil, `annotation vwire.io/connect: "Bad_Service@x.example"`},
		{map[string]string{kube.AnnotationConnect: "a/if0,b/if0"}, nil, "two vWires ask for interface if0"},
		{map[string]string{kube.AnnotationConnect: " , "}, nil, "annotation vwire.io/connect is empty"},
		{map[string]string{kube.AnnotationConnect: "a?app=we b"}, nil, `label app="we b"`},
		{map[string]string{"other": "x"}, nil, ""},
		{map[string]string{kube.AnnotationConnect: strings.Repeat("svc,", kube.MaxVWiresPerPod+1)}, nil, "17 vWires asked for: a pod gets at most 16"},
	} {
		got, err := kube.ParseRequests(c.annotations)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v: %v, want an error with %q", c.annotations, err, c.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%v: %+v, %v; want %+v", c.annotations, got, err, c.want)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	spec, err := kube.ParseEndpoint("vpn?cidr=172.16.0.0/24")
	if err != nil || spec.Service != "vpn" || spec.CIDR.String() != "172.16.0.0/24" || spec.Payload != "IP" {
		t.Errorf("vpn?cidr=172.16.0.0/24: %+v, %v", spec, err)
	}
	for v, want := range map[string]string{
		"vpn":                                 `cidr="": the prefix it hands addresses out of`,
		"vpn@b.example?cidr=172.16.0.0/24":    "an endpoint serves a service of its own domain",
		"vpn?cidr=172.16.0.0/24&color=blue":   "unknown setting color",
		"vpn?cidr=172.16.0.0/24&payload=QUIC": "payload=QUIC: want IP or ETHERNET",
		"vpn?cidr=172.16.0.0":                 `cidr="172.16.0.0"`,
		"Not_A_Service?cidr=172.16.0.0/24":    `"Not_A_Service?cidr=172.16.0.0/24"`,
	} {
		if _, err := kube.ParseEndpoint(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", v, err, want)
		}
	}
}

var injector = &kube.Injector{Image: "vwire:dev", PullPolicy: "IfNotPresent", SocketDir: "/run/vwire", StartupTimeout: 90 * time.Second, Log: slog.New(slog.DiscardHandler)}

// patched applies the injector's patch to a pod the simple way: the test
// reads which containers and volumes it adds.
func patched(t *testing.T, podJSON string) (initContainers []map[string]any, volumes []string) {
	t.Helper()
	patch, err := injector.Patch([]byte(podJSON))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range patch {
		path := op["path"].(string)
		switch v := op["value"].(type) {
		case []map[string]any:
			for _, m := range v {
				if strings.HasPrefix(path, "/spec/initContainers") {
					initContainers = append(initContainers, m)
				} else {
					volumes = append(volumes, m["name"].(string))
				}
			}
		case map[string]any:
			if strings.HasPrefix(path, "/spec/initContainers") {
				initContainers = append(initContainers, v)
			} else {
				volumes = append(volumes, v["name"].(string))
			}
		}
	}
	return initContainers, volumes
}

func TestInjectorPatch(t *testing.T) {
	// No annotation, no patch.
	if patch, err := injector.Patch([]byte(`{"metadata":{"name":"p","labels":{"app":"x"}},"spec":{"containers":[{"name":"c"}]}}`)); patch != nil || err != nil {
		t.Errorf("a pod without vWires: %v, %v", patch, err)
	}
	// A client: one sidecar per vWire, with the pod's labels and the
	// request's over them, and a startup probe bounded by the timeout.
	cs, vols := patched(t, `{"metadata":{"name":"p","labels":{"app":"web","tier":"x"},"annotations":{"vwire.io/connect":"svc@b.example?tier=front,other/wire1"}},"spec":{"containers":[{"name":"c"}]}}`)
	if len(cs) != 2 || cs[0]["name"] != "vwire-nsm0" || cs[1]["name"] != "vwire-wire1" {
		t.Fatalf("sidecars: %v", cs)
	}
	args := cs[0]["args"].([]string)
	if want := []string{"connect", "svc@b.example", "--interface", "nsm0", "--gateway", "unix:///run/vwire/gateway.sock", "--ready-file", "/run/vwire-ready/nsm0", "--labels", "app=web,tier=front,vwire.io/pod-namespace=$(POD_NAMESPACE)"}; !reflect.DeepEqual(args, want) {
		t.Errorf("sidecar args %q, want %q", args, want)
	}
	if cs[0]["restartPolicy"] != "Always" {
		t.Error("the sidecar is not a native sidecar (restartPolicy Always): the app would not wait for it")
	}
	probe := cs[0]["startupProbe"].(map[string]any)
	if probe["failureThreshold"].(int)*probe["periodSeconds"].(int) != 90 {
		t.Errorf("startup probe %v: want 90 s", probe)
	}
	if !reflect.DeepEqual(vols, []string{"vwire-gateway", "vwire-ready"}) {
		t.Errorf("volumes %v", vols)
	}
	for _, e := range cs[0]["env"].([]map[string]any) {
		if e["name"] == "VWIRE_OTLP_ENDPOINT" {
			t.Errorf("a sidecar sends traces with no endpoint given: %v", e)
		}
	}
	// With an OTLP endpoint, the sidecars trace to it.
	traced := *injector
	traced.OTLPEndpoint = "otel-collector.monitoring:4317"
	patch, err := traced.Patch([]byte(`{"metadata":{"name":"p","annotations":{"vwire.io/connect":"svc@b.example"}},"spec":{"containers":[{"name":"c"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	env := patch[len(patch)-1]["value"].([]map[string]any)[0]["env"].([]map[string]any)
	if last := env[len(env)-1]; last["name"] != "VWIRE_OTLP_ENDPOINT" || last["value"] != "otel-collector.monitoring:4317" {
		t.Errorf("a traced sidecar's environment: %v", env)
	}
	// An endpoint pod registers with its labels.
	cs, _ = patched(t, `{"metadata":{"name":"p","labels":{"app":"vpn"},"annotations":{"vwire.io/endpoint":"vpn-gw?cidr=172.16.0.0/24"}},"spec":{"containers":[{"name":"c"}],"volumes":[{"name":"data"}]}}`)
	if len(cs) != 1 || !strings.Contains(strings.Join(cs[0]["args"].([]string), " "), "endpoint --service vpn-gw --name vpn-gw-$(POD_NAME).$(POD_NAMESPACE) --cidr 172.16.0.0/24 --payload IP") ||
		!strings.Contains(strings.Join(cs[0]["args"].([]string), " "), "--labels app=vpn") {
		t.Errorf("endpoint sidecar: %v", cs)
	}
	// The pod's own init containers run after the sidecars (they may need
	// the vWires), and a pod patched already is left alone.
	patch, _ = injector.Patch([]byte(`{"metadata":{"name":"p","annotations":{"vwire.io/connect":"a,b"}},"spec":{"initContainers":[{"name":"setup"}],"containers":[{"name":"c"}]}}`))
	var order []string
	for _, op := range patch {
		if op["path"] == "/spec/initContainers/0" {
			order = append([]string{op["value"].(map[string]any)["name"].(string)}, order...)
		}
	}
	if !reflect.DeepEqual(order, []string{"vwire-nsm0", "vwire-nsm1"}) {
		t.Errorf("sidecars inserted as %v, want vwire-nsm0 then vwire-nsm1, before the pod's own", order)
	}
	if patch, err := injector.Patch([]byte(`{"metadata":{"annotations":{"vwire.io/connect":"a"}},"spec":{"initContainers":[{"name":"vwire-nsm0"}]}}`)); patch != nil || err != nil {
		t.Errorf("a pod injected already: %v, %v", patch, err)
	}
	if _, err := injector.Patch([]byte(`{"metadata":{"annotations":{"vwire.io/connect":"a"}},"spec":{"hostNetwork":true}}`)); err == nil || !strings.Contains(err.Error(), "host's network") {
		t.Errorf("a host-network pod: %v", err)
	}
	// Routes the pod accepts reach each vWire's sidecar; a bad one is
	// refused at admission.
	cs, _ = patched(t, `{"metadata":{"name":"p","annotations":{"vwire.io/connect":"a","vwire.io/accept-routes":"0.0.0.0/0, 10.8.0.0/16"}},"spec":{"containers":[{"name":"c"}]}}`)
	if args := strings.Join(cs[0]["args"].([]string), " "); !strings.HasSuffix(args, "--accept-routes 0.0.0.0/0,10.8.0.0/16") {
		t.Errorf("sidecar args with accepted routes: %s", args)
	}
	if _, err := injector.Patch([]byte(`{"metadata":{"annotations":{"vwire.io/connect":"a","vwire.io/accept-routes":"everything"}},"spec":{}}`)); err == nil ||
		!strings.Contains(err.Error(), `annotation vwire.io/accept-routes: "everything": want a prefix`) {
		t.Errorf("a bad accepted route: %v", err)
	}
}

// The webhook answers AdmissionReviews: a patch, or a refusal that says
// what is wrong with the annotation.
func TestInjectorWebhook(t *testing.T) {
	srv := httptest.NewServer(injector)
	defer srv.Close()
	review := func(pod string) map[string]any {
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","namespace":"default","operation":"CREATE","object":` + pod + `}}`
		resp, err := http.Post(srv.URL, "application/json", bytes.NewBufferString(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return out["response"].(map[string]any)
	}
	r := review(`{"metadata":{"name":"p","annotations":{"vwire.io/connect":"svc@b.example"}},"spec":{"containers":[{"name":"c"}]}}`)
	if r["uid"] != "u1" || r["allowed"] != true || r["patchType"] != "JSONPatch" || r["patch"] == nil {
		t.Errorf("a pod with a vWire: %v", r)
	}
	r = review(`{"metadata":{"name":"p","annotations":{"vwire.io/connect":"svc@b.example/way-too-long-a-name"}},"spec":{"containers":[{"name":"c"}]}}`)
	if r["allowed"] != false || !strings.Contains(r["status"].(map[string]any)["message"].(string), "a Linux interface name is 1 to 15") {
		t.Errorf("a bad annotation: %v", r)
	}
}
